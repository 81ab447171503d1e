"""CLI commands over the source-task library: rank, library list|add|remove|build|export|import, evaluate."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.cli_common import echo, library_errors, library_service, load_target, progress_bar, text_table
from library.settings import Settings

# -------------------------------------------------------------------------------------------------
# rank
# -------------------------------------------------------------------------------------------------


def cmd_rank(args: argparse.Namespace, settings: Settings) -> int:
    from embeddings.encoders import set_threads

    if args.top < 1:
        raise ValueError("--top must be at least 1")
    set_threads(settings.torch_threads)
    dataset = load_target(args, settings)
    with library_service(settings) as service:
        with progress_bar(f"{args.method or service.default_method()} {dataset.name}") as on_progress:
            ranking = service.rank(dataset, args.method, args.top, args.all_class, on_progress)
        for note in ranking.notes:
            echo(f"note: {note}", err=True)
        cache = service.cache
        if cache is not None and cache.hits:
            echo(f"the target's embeddings came from the cache ({cache.directory}): nothing re-embedded", err=True)
    if args.json:
        echo(json.dumps(ranking.to_dict(), indent=2))
        return 0
    scope = "all task types" if args.all_class else f"{ranking.target.task_type} sources"
    echo(
        f"{ranking.target.name} ({ranking.target.task_type}, {len(dataset)} rows): top {len(ranking.sources)} "
        f"by {ranking.method} over {scope}; library {ranking.library_version}, model {ranking.model_name}"
    )
    if not ranking.sources:
        echo(f"no {ranking.target.task_type} source tasks in the library; try --all-class")
        return 0
    from library.methods import RANKING_METHODS

    spec = RANKING_METHODS.get(args.method)
    score = "similarity" if spec.score_label == "similarity" else "RRF"
    rows = [
        [str(s.rank), s.name, s.task_type, f"{s.score:.4f}", spec.explain(s.details)]
        for s in ranking.sources
    ]
    if ranking.info.get("note"):
        echo(f"note: {ranking.info['note']}", err=True)
    if any("expected_gain" in (s.details.get("learned") or {}) for s in ranking.sources):
        _learned_rows(rows, ranking, len(dataset), settings)
        echo(f"learned ranker version {ranking.info.get('ranker_version')}")
        echo(text_table(rows, ["rank", "source", "task type", "expected gain", "why", "est. min", "gain/min"],
                        right={0, 3, 5, 6}))
        return 0
    echo(text_table(rows, ["rank", "source", "task type", score, "why"], right={0, 3}))
    return 0


def _learned_rows(rows: list[list[str]], ranking: Any, target_rows: int, settings: Settings) -> None:
    """A learned ranking's rows: the expected gain in %, and each transfer's estimated minutes here."""
    from library.costs import cached_checkpoints, estimates, row_rate
    from library.ranker_store import RankerStore
    from library.transfers import read_sidecar, sidecar_path

    with RankerStore(settings.resolved_database_url) as rstore:
        results = rstore.results()
    sidecar = read_sidecar(sidecar_path(settings.resolved_transfer_matrix))
    found = estimates([{"name": s.name, "num_train": s.num_train, "score": s.score} for s in ranking.sources],
                      target_rows, row_rate(results, sidecar),
                      cached_checkpoints(settings.paths.checkpoints, sidecar, results))
    for row, s in zip(rows, ranking.sources, strict=True):
        row[3] = f"{s.score:+.1f}%"
        estimate = found.get(s.name) or {}
        row += [f"{estimate['minutes']:.0f}" if estimate else "-",
                f"{estimate['gain_per_minute']:+.2f}" if estimate.get("gain_per_minute") is not None else "-"]


# -------------------------------------------------------------------------------------------------
# library
# -------------------------------------------------------------------------------------------------


def cmd_library_list(args: argparse.Namespace, settings: Settings) -> int:
    from library.build import library_models, library_options

    with library_service(settings) as service:
        store = service.store
        tasks = store.list_tasks()
        version = store.version()
        models = library_models(store)
        options = library_options(store)
        if args.json:
            echo(
                json.dumps(
                    {
                        "library_version": version,
                        "models": models,
                        "options": options.identity() if options else None,
                        "tasks": [
                            {
                                "name": t.name,
                                "task_type": t.task_type,
                                "num_train": t.num_train,
                                "num_dev": t.num_dev,
                                "data_hash": t.data_hash,
                                "description": t.description,
                                "provenance": t.provenance,
                                "methods": sorted({e.method for e in store.task_embeddings(t.id)}),
                            }
                            for t in tasks
                        ],
                    },
                    indent=2,
                    default=str,
                )
            )
            return 0
        echo(f"library {version}: {len(tasks)} source tasks")
        if models:
            echo("model: " + ", ".join(f"{n} ({h})" for n, h in sorted(models.items())))
        if options:
            echo(
                f"options: {options.max_rows} rows max, seed {options.seed}, methods {', '.join(options.methods)}"
            )
        if not tasks:
            echo("(empty: run `taskrank library build DATA_DIR` or `taskrank library import DIR`)")
            return 0
        rows = []
        for t in tasks:
            build = t.provenance.get("build", {}) if isinstance(t.provenance, dict) else {}
            embeddings = store.task_embeddings(t.id)
            methods = sorted({e.method for e in embeddings})
            rows.append(
                [
                    t.name,
                    t.task_type,
                    str(t.num_train),
                    str(build.get("rows_used", "")),
                    ",".join(methods) + f" ({len(embeddings)} vectors)",
                    t.data_hash[:12],
                ]
            )
        echo(text_table(rows, ["name", "task type", "train", "embedded", "methods", "data hash"], right={2, 3}))
    return 0


def cmd_library_add(args: argparse.Namespace, settings: Settings) -> int:
    from embeddings.encoders import set_threads
    from library.build import BuildOptions, add_source, library_options

    set_threads(settings.torch_threads)
    dataset = load_target(args, settings)
    name = args.name or dataset.name
    with library_service(settings) as service:
        store = service.store
        if store.get_task(name) is not None:
            raise ValueError(
                f"source task {name!r} already exists: choose --name or `taskrank library remove {name}`"
            )
        encoder = service.encoder
        options = (library_options(store) or BuildOptions(seed=settings.seed)).with_token_budget(
            encoder.token_budget(settings.max_tokens_per_batch)
        )
        with progress_bar(f"embed {name}") as on_progress:
            task, report = add_source(
                store,
                dataset,
                encoder,
                options,
                name=name,
                description=args.description or "",
                provenance={"source": str(args.path), "added_by": "taskrank library add"},
                on_progress=on_progress,
            )
    result = {
        "name": task.name,
        "task_type": task.task_type,
        "num_train": task.num_train,
        "rows_used": report.rows_used,
        "seconds": report.seconds,
        "data_hash": task.data_hash,
    }
    if args.json:
        echo(json.dumps(result, indent=2))
    else:
        echo(
            f"added {task.name} ({task.task_type}, {task.num_train} rows, {report.rows_used} embedded) "
            f"in {report.seconds:.1f} s"
        )
    return 0


def cmd_library_remove(args: argparse.Namespace, settings: Settings) -> int:
    with library_service(settings) as service:
        task = service.store.remove_task(args.name)
        service.library.indexes.sync()
    echo(f"removed {task.name}")
    return 0


def cmd_library_restore_default(args: argparse.Namespace, settings: Settings) -> int:
    """Import again the shipped sources the library is missing (after `library remove`)."""
    from library.bundle import restore_default_library

    with library_service(settings) as service:
        report = restore_default_library(service.store)
        if report.added:
            service.library.indexes.sync()
    if report.added:
        echo(f"restored {len(report.added)} shipped source task{'s' if len(report.added) != 1 else ''}: "
             f"{', '.join(report.added)}; library {report.library_version}")
    else:
        echo(f"nothing to restore: the library has all {len(report.skipped)} shipped source tasks")
    return 0


def _checkpoint_build_inputs(args: argparse.Namespace, settings: Settings) -> tuple[Path, list[Path], list[str] | None]:
    """(data dir, checkpoint dirs, --only names) of a build read from fine-tuned source checkpoints."""
    from embeddings.encoders import set_threads

    set_threads(settings.torch_threads)
    data_dir = Path(args.data_dir) if args.data_dir else settings.shared_data_dir
    dirs = [Path(d) for d in (args.checkpoints or [settings.paths.checkpoints])]
    only = [n.strip() for n in args.only.split(",") if n.strip()] if args.only else None
    return data_dir, dirs, only


def _echo_checkpoint_report(report: Any, data_dir: Path, dirs: list[Path], artefact: str) -> None:
    """What a checkpoint-based build kept, and which sources it could not build, and why."""
    from library.source_checkpoints import TRAIN_HINT

    if report.kept:
        echo(f"unchanged (already built from the same checkpoint): {', '.join(report.kept)}")
    if report.missing_checkpoint:
        echo(f"no fine-tuned checkpoint in {', '.join(map(str, dirs))} for: {', '.join(report.missing_checkpoint)} "
             f"(no {artefact} for them); {TRAIN_HINT}", err=True)
    if report.no_data:
        echo(f"no task folder under {data_dir} for: {', '.join(report.no_data)}", err=True)
    if report.unsupported:
        echo(f"{artefact} is not built for these sources' task types: {', '.join(report.unsupported)}", err=True)


def cmd_library_build_esm(args: argparse.Namespace, settings: Settings) -> int:
    """ESMs from the cached practitioner-regime checkpoints; trains nothing (says what is missing)."""
    from library.esm import build_esms
    from library.pipeline import ranking_options

    data_dir, dirs, only = _checkpoint_build_inputs(args, settings)
    with library_service(settings) as service:
        options = ranking_options(service.store, service.encoder, settings.max_tokens_per_batch)
        with progress_bar("fitting ESMs") as on_progress:
            report = build_esms(service.store, data_dir, service.encoder, dirs, options.embed_options(), only=only,
                                on_progress=on_progress)
        if args.bundle:
            from library.bundle import write_bundle_maps

            echo(f"wrote {write_bundle_maps(service.store, args.bundle)} maps into {args.bundle}", err=True)
    for name, info in report.built.items():
        echo(f"{name:<24} ESM fitted on {info['rows']} rows, held-out R^2 {info['r2_heldout']:.3f} "
             f"({info['seconds']:.0f} s)")
    _echo_checkpoint_report(report, data_dir, dirs, "ESM")
    return 0


def cmd_library_build_taskemb_ft(args: argparse.Namespace, settings: Settings) -> int:
    """Checkpoint-based TaskEmb (taskemb_ft) from the cached practitioner-regime checkpoints; trains nothing."""
    from library.pipeline import ranking_options
    from library.taskemb_ft import build_finetuned_taskembs

    data_dir, dirs, only = _checkpoint_build_inputs(args, settings)
    with library_service(settings) as service:
        options = ranking_options(service.store, service.encoder, settings.max_tokens_per_batch)
        with progress_bar("checkpoint-based TaskEmb") as on_progress:
            report = build_finetuned_taskembs(service.store, data_dir, service.encoder, dirs, options, only=only,
                                              on_progress=on_progress)
        if report.built:
            service.library.indexes.sync()
        if args.bundle:
            from library.bundle import write_bundle_embeddings

            written = write_bundle_embeddings(service.store, args.bundle, "taskemb_ft")
            echo(f"wrote the taskemb_ft vectors of {len(written)} sources into {args.bundle}", err=True)
    for name, info in report.built.items():
        echo(f"{name:<24} taskemb_ft from {info['checkpoint']} on {info['rows']} rows ({info['seconds']:.0f} s)")
    _echo_checkpoint_report(report, data_dir, dirs, "taskemb_ft")
    return 0


def _checkpoint_artefacts_after_build(service: Any, data_dir: Path, settings: Settings, options: Any,
                                      only: list[str] | None) -> None:
    """The build also fits ESMs and the checkpoint-based TaskEmb where fine-tuned source checkpoints are
    cached (it never trains them)."""
    from library.esm import build_esms
    from library.taskemb_ft import build_finetuned_taskembs

    names = [n for n in only if service.store.get_task(n) is not None] if only is not None else None
    dirs = [settings.paths.checkpoints]
    esms = build_esms(service.store, data_dir, service.encoder, dirs, options.embed_options(), only=names)
    taskembs = build_finetuned_taskembs(service.store, data_dir, service.encoder, dirs, options, only=names)
    if taskembs.built:
        service.library.indexes.sync()
    for artefact, report, command in (("ESMs", esms, "build-esm"),
                                      ("checkpoint-based TaskEmbs (taskemb_ft)", taskembs, "build-taskemb-ft")):
        if report.built:
            echo(f"computed the {artefact} of {', '.join(report.built)}", err=True)
        if report.missing_checkpoint:
            echo(f"no {artefact} for {len(report.missing_checkpoint)} source(s) without a fine-tuned checkpoint in "
                 f"{settings.paths.checkpoints} (`taskrank library {command}` after training them)", err=True)


def cmd_library_build(args: argparse.Namespace, settings: Settings) -> int:
    from tqdm import tqdm

    from embeddings.encoders import set_threads
    from library.build import BuildOptions, build_library, task_folders

    if args.max_rows < 1:
        raise ValueError("--max-rows must be at least 1")
    only = [o for o in args.only.split(",") if o.strip()] if args.only else None
    task_folders(args.data_dir, only)  # a bad directory or task name fails before the model loads
    set_threads(settings.torch_threads)
    seed = settings.seed if args.seed is None else args.seed
    with library_service(settings) as service:
        encoder = service.encoder
        options = BuildOptions(max_rows=args.max_rows, seed=seed).with_token_budget(
            encoder.token_budget(settings.max_tokens_per_batch)
        )

        def on_task(report: Any) -> None:
            if report.status == "skipped":
                tqdm.write(f"{report.name}: up to date, skipped", file=sys.stderr)
            else:
                tqdm.write(
                    f"{report.name}: {report.status} ({report.task_type}, {report.rows_used} rows) "
                    f"in {report.seconds:.1f} s",
                    file=sys.stderr,
                )

        with progress_bar("current task") as on_task_progress:
            report = build_library(
                args.data_dir,
                service.store,
                encoder,
                options,
                only=only,
                on_task=on_task,
                on_task_progress=on_task_progress,
            )
        service.library.indexes.sync()
        _checkpoint_artefacts_after_build(service, Path(args.data_dir), settings, options, only)
    if args.json:
        echo(json.dumps(report.to_dict(), indent=2))
    else:
        embedded = [t for t in report.tasks if t.status != "skipped"]
        times = [t.seconds for t in embedded]
        span = f" ({min(times):.1f}-{max(times):.1f} s per task)" if times else ""
        echo(
            f"built {len(embedded)} source tasks, {len(report.skipped)} up to date, in {report.seconds:.1f} s{span}; "
            f"library {report.library_version}, model {report.model_name} ({report.model_hash})"
        )
    return 0


def cmd_library_export(args: argparse.Namespace, settings: Settings) -> int:
    from library.bundle import export_library

    with library_service(settings) as service:
        report = export_library(service.store, args.dir)
    echo(
        f"exported {report.tasks} tasks ({report.vectors} vectors, {report.bytes / 1e6:.2f} MB) of library "
        f"{report.library_version} to {report.path}"
    )
    return 0


def cmd_library_import(args: argparse.Namespace, settings: Settings) -> int:
    from library.bundle import import_library

    with library_service(settings, ensure_default=False) as service:
        report = import_library(service.store, args.dir, replace=args.replace)
        service.library.indexes.sync()
    echo(
        f"imported {len(report.added)} tasks, replaced {len(report.replaced)}, {len(report.skipped)} already "
        f"present; library {report.library_version}"
    )
    return 0


# -------------------------------------------------------------------------------------------------
# evaluate
# -------------------------------------------------------------------------------------------------


def cmd_evaluate(args: argparse.Namespace, settings: Settings) -> int:
    from app.cli_transfers import headline_note, print_evaluation_report, print_skipped
    from library.evaluation import load_transfer_matrix  # skips targets with baseline <= 0; `baseline` alias

    targets = [t.strip() for t in args.targets.split(",") if t.strip()] if args.targets else None
    table = load_transfer_matrix(args.table, targets)
    with library_service(settings) as service:
        result = service.evaluate(table, headline="all" if args.all_targets else "auto")
    if args.json:
        echo(json.dumps(result, indent=2))
        return 0
    for target, sources in result["missing_sources"].items():
        echo(
            f"warning: {target}: source(s) {', '.join(sources)} are not in the library (counted as ranked last)",
            err=True,
        )
    print_skipped(result, echo)
    k_ndcg, k_regret = result["k_ndcg"], result["k_regret"]
    echo(
        f"{len(result['targets'])} target(s): {', '.join(result['targets'])}; library {result['library_version']}"
        + headline_note(result)
    )
    rows = [
        [method, f"{m['ndcg']:.3f}", f"{m['rho']:.2f}", f"{m['regret']:.2f}"]
        for method, m in result["methods"].items()
    ]
    echo(text_table(rows, ["method", f"NDCG@{k_ndcg}", "rho", f"Regret@{k_regret} (%)"], right={1, 2, 3}))
    print_evaluation_report(result, echo)
    return 0


# -------------------------------------------------------------------------------------------------
# parser
# -------------------------------------------------------------------------------------------------


def register(
    sub: argparse._SubParsersAction, dataset_args: Callable[[argparse.ArgumentParser], None]
) -> None:
    """Add the library commands to the `taskrank` parser."""
    from library.methods import DEFAULT_METHOD, RANKING_METHODS

    p = sub.add_parser("rank", help="rank the library's source tasks for a target dataset")
    dataset_args(p)
    p.add_argument(
        "--method", choices=RANKING_METHODS.names(), default=None,
        help="; ".join(f"{m.name}: {m.description}" for m in RANKING_METHODS)
        + f" (default: {DEFAULT_METHOD}, or learned once it validates as the default: `taskrank ranker list`)"
    )
    p.add_argument("--top", type=int, default=10, help="how many sources to show (default 10)")
    p.add_argument(
        "--all-class", action="store_true", help="rank sources of every task type, not only the target's"
    )
    p.set_defaults(func=library_errors(cmd_rank))

    lib = sub.add_parser("library", help="manage the source-task library")
    lsub = lib.add_subparsers(dest="library_command", required=True)

    p = lsub.add_parser("list", help="list the source tasks")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=library_errors(cmd_library_list))

    p = lsub.add_parser("add", help="embed a dataset and add it as a source task")
    dataset_args(p)
    p.add_argument("--name", help="source task name (default: the dataset's name)")
    p.add_argument("--description", help="one-line description")
    p.set_defaults(func=library_errors(cmd_library_add))

    p = lsub.add_parser("remove", help="remove a source task")
    p.add_argument("name")
    p.set_defaults(func=library_errors(cmd_library_remove))

    p = lsub.add_parser("restore-default", help="import again the shipped source tasks the library is missing")
    p.set_defaults(func=library_errors(cmd_library_restore_default))

    p = lsub.add_parser("build", help="embed every task folder of a data directory (resumable)")
    p.add_argument("data_dir", help="directory of task folders (each with task.json, train.jsonl)")
    p.add_argument("--only", help="comma-separated task folder names")
    p.add_argument(
        "--max-rows", type=int, default=1000, help="training rows embedded per source (default 1000)"
    )
    p.add_argument("--seed", type=int, help="subsample and TaskEmb seed (default TASKRANK_SEED, 13)")
    p.add_argument("--json", action="store_true", help="print the build report as JSON")
    p.set_defaults(func=library_errors(cmd_library_build))

    p = lsub.add_parser("build-esm", help="fit an embedding space map (ESM) for every source with a fine-tuned "
                                          "checkpoint (for the esm_logme and logme ranking methods)")
    p.add_argument("--data-dir", help="task folders of the sources (default: TASKRANK_SHARED_DATA_DIR)")
    p.add_argument("--checkpoints", action="append",
                   help="directory of fine-tuned source checkpoints (repeatable; default DATA_DIR/checkpoints)")
    p.add_argument("--only", help="comma-separated source names")
    p.add_argument("--bundle", help="also write the maps into this exported library (e.g. library/default)")
    p.set_defaults(func=library_errors(cmd_library_build_esm))

    p = lsub.add_parser("build-taskemb-ft", help="compute every source's TaskEmb from its fine-tuned checkpoint "
                                                 "(taskemb_ft, for the taskemb_ft ranking method)")
    p.add_argument("--data-dir", help="task folders of the sources (default: TASKRANK_SHARED_DATA_DIR)")
    p.add_argument("--checkpoints", action="append",
                   help="directory of fine-tuned source checkpoints (repeatable; default DATA_DIR/checkpoints)")
    p.add_argument("--only", help="comma-separated source names")
    p.add_argument("--bundle", help="also write the vectors into this exported library (e.g. library/default)")
    p.set_defaults(func=library_errors(cmd_library_build_taskemb_ft))

    p = lsub.add_parser("export", help="write the library to a directory (manifest.json + vectors.npz)")
    p.add_argument("dir")
    p.set_defaults(func=library_errors(cmd_library_export))

    p = lsub.add_parser("import", help="add the tasks of an exported library")
    p.add_argument("dir")
    p.add_argument("--replace", action="store_true", help="replace tasks that differ instead of failing")
    p.set_defaults(func=library_errors(cmd_library_import))

    from app.cli_transfers import add_transfers_command  # `library transfers`

    add_transfers_command(lsub)

    p = sub.add_parser("evaluate", help="score the ranking methods against a transfer table (CSV)")
    p.add_argument("table", help="CSV with columns source,target,score,baseline_score")
    p.add_argument("--targets", help="comma-separated targets to score (default: every target of the table)")
    p.add_argument("--all-targets", action="store_true", help="headline metrics over every target, not only "
                   "the informative ones (the default when the table has seeds)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=library_errors(cmd_evaluate))
