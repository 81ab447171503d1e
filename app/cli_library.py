"""CLI commands over the source-task library: rank, library list|add|remove|build|export|import, evaluate."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable
from typing import Any

from app.settings import Settings

METHODS = ("textemb", "semb", "taskemb", "ensemble")


def _echo(text: str = "", err: bool = False) -> None:
    """The CLI's output: a line on stdout (results) or stderr (messages)."""
    stream = sys.stderr if err else sys.stdout
    stream.write(f"{text}\n")
    stream.flush()


def _service(settings: Settings, ensure_default: bool = True):  # -> library.service.LibraryService
    from library.service import LibraryService

    service = LibraryService.from_settings(settings, ensure_default=ensure_default)
    report = service.default_import
    if report is not None and report.added:
        _echo(f"imported the default library ({len(report.added)} source tasks)", err=True)
    return service


def _library_errors(
    func: Callable[[argparse.Namespace, Settings], int],
) -> Callable[[argparse.Namespace, Settings], int]:
    """LibraryError is a user-facing error: one line on stderr, exit 1 (app.cli.main handles ValueError)."""

    def wrapped(args: argparse.Namespace, settings: Settings) -> int:
        from library.errors import LibraryError

        try:
            return func(args, settings)
        except LibraryError as exc:
            _echo(f"error: {exc}", err=True)
            return 1

    wrapped.__name__ = func.__name__
    return wrapped


def _table(rows: list[list[str]], header: list[str], right: set[int] | None = None) -> str:
    right = right or set()
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(
            (str(c).rjust(w) if i in right else str(c).ljust(w))
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


# -------------------------------------------------------------------------------------------------
# rank
# -------------------------------------------------------------------------------------------------


def _explain(method: str, details: dict[str, dict[str, Any]]) -> str:
    """A compact per-part summary of how a source got its place."""
    if method in ("textemb", "semb"):
        part = next(iter(details.values()))
        return f"cos {part['similarity']:.3f}"
    if method == "taskemb":
        ranks = {c: int(d["rank"]) for c, d in details.items()}
        best = min(ranks, key=lambda c: (ranks[c], c))
        worst = max(ranks, key=lambda c: (ranks[c], c))
        median = statistics.median(ranks.values())
        return (
            f"{len(ranks)} components: best {ranks[best]} ({best}), median {median:g}, "
            f"worst {ranks[worst]} ({worst})"
        )
    return "  ".join(f"{m} {int(details[m]['rank'])}" for m in ("textemb", "semb", "taskemb") if m in details)


def cmd_rank(args: argparse.Namespace, settings: Settings) -> int:
    from app.cli import _load, progress_bar
    from embeddings.encoders import set_threads

    if args.top < 1:
        raise ValueError("--top must be at least 1")
    set_threads(settings.torch_threads)
    dataset = _load(args, settings)
    with _service(settings) as service:
        with progress_bar(f"{args.method} {dataset.name}") as on_progress:
            ranking = service.rank(dataset, args.method, args.top, args.all_class, on_progress)
    if args.json:
        _echo(json.dumps(ranking.to_dict(), indent=2))
        return 0
    scope = "all task types" if args.all_class else f"{ranking.target.task_type} sources"
    _echo(
        f"{ranking.target.name} ({ranking.target.task_type}, {len(dataset)} rows): top {len(ranking.sources)} "
        f"by {ranking.method} over {scope}; library {ranking.library_version}, model {ranking.model_name}"
    )
    if not ranking.sources:
        _echo(f"no {ranking.target.task_type} source tasks in the library; try --all-class")
        return 0
    score = "similarity" if args.method in ("textemb", "semb") else "RRF"
    rows = [
        [str(s.rank), s.name, s.task_type, f"{s.score:.4f}", _explain(args.method, s.details)]
        for s in ranking.sources
    ]
    _echo(_table(rows, ["rank", "source", "task type", score, "why"], right={0, 3}))
    return 0


# -------------------------------------------------------------------------------------------------
# library
# -------------------------------------------------------------------------------------------------


def cmd_library_list(args: argparse.Namespace, settings: Settings) -> int:
    from library.build import library_models, library_options

    with _service(settings) as service:
        store = service.store
        tasks = store.list_tasks()
        version = store.version()
        models = library_models(store)
        options = library_options(store)
        if args.json:
            _echo(
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
        _echo(f"library {version}: {len(tasks)} source tasks")
        if models:
            _echo("model: " + ", ".join(f"{n} ({h})" for n, h in sorted(models.items())))
        if options:
            _echo(
                f"options: {options.max_rows} rows max, seed {options.seed}, methods {', '.join(options.methods)}"
            )
        if not tasks:
            _echo("(empty: run `taskrank library build DATA_DIR` or `taskrank library import DIR`)")
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
        _echo(_table(rows, ["name", "task type", "train", "embedded", "methods", "data hash"], right={2, 3}))
    return 0


def cmd_library_add(args: argparse.Namespace, settings: Settings) -> int:
    from app.cli import _load, progress_bar
    from embeddings.encoders import set_threads
    from library.build import BuildOptions, add_source, library_options

    set_threads(settings.torch_threads)
    dataset = _load(args, settings)
    name = args.name or dataset.name
    with _service(settings) as service:
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
        _echo(json.dumps(result, indent=2))
    else:
        _echo(
            f"added {task.name} ({task.task_type}, {task.num_train} rows, {report.rows_used} embedded) "
            f"in {report.seconds:.1f} s"
        )
    return 0


def cmd_library_remove(args: argparse.Namespace, settings: Settings) -> int:
    with _service(settings) as service:
        task = service.store.remove_task(args.name)
        service.library.indexes.sync()
    _echo(f"removed {task.name}")
    return 0


def cmd_library_build(args: argparse.Namespace, settings: Settings) -> int:
    from tqdm import tqdm

    from app.cli import progress_bar
    from embeddings.encoders import set_threads
    from library.build import BuildOptions, build_library, task_folders

    if args.max_rows < 1:
        raise ValueError("--max-rows must be at least 1")
    only = [o for o in args.only.split(",") if o.strip()] if args.only else None
    task_folders(args.data_dir, only)  # a bad directory or task name fails before the model loads
    set_threads(settings.torch_threads)
    seed = settings.seed if args.seed is None else args.seed
    with _service(settings) as service:
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
    if args.json:
        _echo(json.dumps(report.to_dict(), indent=2))
    else:
        embedded = [t for t in report.tasks if t.status != "skipped"]
        times = [t.seconds for t in embedded]
        span = f" ({min(times):.1f}-{max(times):.1f} s per task)" if times else ""
        _echo(
            f"built {len(embedded)} source tasks, {len(report.skipped)} up to date, in {report.seconds:.1f} s{span}; "
            f"library {report.library_version}, model {report.model_name} ({report.model_hash})"
        )
    return 0


def cmd_library_export(args: argparse.Namespace, settings: Settings) -> int:
    from library.bundle import export_library

    with _service(settings) as service:
        report = export_library(service.store, args.dir)
    _echo(
        f"exported {report.tasks} tasks ({report.vectors} vectors, {report.bytes / 1e6:.2f} MB) of library "
        f"{report.library_version} to {report.path}"
    )
    return 0


def cmd_library_import(args: argparse.Namespace, settings: Settings) -> int:
    from library.bundle import import_library

    with _service(settings, ensure_default=False) as service:
        report = import_library(service.store, args.dir, replace=args.replace)
        service.library.indexes.sync()
    _echo(
        f"imported {len(report.added)} tasks, replaced {len(report.replaced)}, {len(report.skipped)} already "
        f"present; library {report.library_version}"
    )
    return 0


# -------------------------------------------------------------------------------------------------
# evaluate
# -------------------------------------------------------------------------------------------------


def cmd_evaluate(args: argparse.Namespace, settings: Settings) -> int:
    from library.evaluation import load_transfer_table

    targets = [t.strip() for t in args.targets.split(",") if t.strip()] if args.targets else None
    table = load_transfer_table(args.table, targets)
    with _service(settings) as service:
        result = service.evaluate(table)
    if args.json:
        _echo(json.dumps(result, indent=2))
        return 0
    for target, sources in result["missing_sources"].items():
        _echo(
            f"warning: {target}: source(s) {', '.join(sources)} are not in the library (counted as ranked last)",
            err=True,
        )
    k_ndcg, k_regret = result["k_ndcg"], result["k_regret"]
    _echo(
        f"{len(result['targets'])} target(s): {', '.join(result['targets'])}; library {result['library_version']}"
    )
    rows = [
        [method, f"{m['ndcg']:.3f}", f"{m['rho']:.2f}", f"{m['regret']:.2f}"]
        for method, m in result["methods"].items()
    ]
    _echo(_table(rows, ["method", f"NDCG@{k_ndcg}", "rho", f"Regret@{k_regret} (%)"], right={1, 2, 3}))
    return 0


# -------------------------------------------------------------------------------------------------
# parser
# -------------------------------------------------------------------------------------------------


def register(
    sub: argparse._SubParsersAction, dataset_args: Callable[[argparse.ArgumentParser], None]
) -> None:
    """Add the library commands to the `taskrank` parser."""
    p = sub.add_parser("rank", help="rank the library's source tasks for a target dataset")
    dataset_args(p)
    p.add_argument(
        "--method", choices=METHODS, default="ensemble", help="default: ensemble (RRF of all three)"
    )
    p.add_argument("--top", type=int, default=10, help="how many sources to show (default 10)")
    p.add_argument(
        "--all-class", action="store_true", help="rank sources of every task type, not only the target's"
    )
    p.set_defaults(func=_library_errors(cmd_rank))

    lib = sub.add_parser("library", help="manage the source-task library")
    lsub = lib.add_subparsers(dest="library_command", required=True)

    p = lsub.add_parser("list", help="list the source tasks")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_library_errors(cmd_library_list))

    p = lsub.add_parser("add", help="embed a dataset and add it as a source task")
    dataset_args(p)
    p.add_argument("--name", help="source task name (default: the dataset's name)")
    p.add_argument("--description", help="one-line description")
    p.set_defaults(func=_library_errors(cmd_library_add))

    p = lsub.add_parser("remove", help="remove a source task")
    p.add_argument("name")
    p.set_defaults(func=_library_errors(cmd_library_remove))

    p = lsub.add_parser("build", help="embed every task folder of a data directory (resumable)")
    p.add_argument("data_dir", help="directory of task folders (each with task.json, train.jsonl)")
    p.add_argument("--only", help="comma-separated task folder names")
    p.add_argument(
        "--max-rows", type=int, default=1000, help="training rows embedded per source (default 1000)"
    )
    p.add_argument("--seed", type=int, help="subsample and TaskEmb seed (default TASKRANK_SEED, 13)")
    p.add_argument("--json", action="store_true", help="print the build report as JSON")
    p.set_defaults(func=_library_errors(cmd_library_build))

    p = lsub.add_parser("export", help="write the library to a directory (manifest.json + vectors.npz)")
    p.add_argument("dir")
    p.set_defaults(func=_library_errors(cmd_library_export))

    p = lsub.add_parser("import", help="add the tasks of an exported library")
    p.add_argument("dir")
    p.add_argument("--replace", action="store_true", help="replace tasks that differ instead of failing")
    p.set_defaults(func=_library_errors(cmd_library_import))

    p = sub.add_parser("evaluate", help="score the ranking methods against a transfer table (CSV)")
    p.add_argument("table", help="CSV with columns source,target,score,baseline_score")
    p.add_argument("--targets", help="comma-separated targets to score (default: every target of the table)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_library_errors(cmd_evaluate))
