"""`taskrank` command line: inspect a dataset, embed it. Errors are one readable line, never a traceback."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from app.cli_common import column_map, library_service, load_target, progress_bar
from library.settings import Settings, get_settings


def plural(count: int, noun: str) -> str:
    """`1 seed`, `3 seeds`."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def cmd_inspect(args: argparse.Namespace, settings: Settings) -> int:
    dataset = load_target(args, settings)
    description = dataset.describe()
    if args.json:
        print(json.dumps(description, indent=2))
        return 0
    print(f"{description['name']}: {description['task_type']}, {description['rows']} rows"
          + (", text pairs" if description.get("pair") else ""))
    labels = description.get("labels") or {}
    if labels:
        shown = ", ".join(f"{k} ({v})" for k, v in list(labels.items())[:20])
        more = f", ... {len(labels) - 20} more" if len(labels) > 20 else ""
        print(f"labels: {len(labels)}: {shown}{more}")
    for key in ("length_words", "length_chars"):
        if key in description:
            stats = description[key]
            print(f"{key.replace('_', ' ')}: " + ", ".join(f"{k} {v}" for k, v in stats.items()))
    if "unanswerable" in description:
        print(f"unanswerable: {description['unanswerable']}")
    print(f"content hash: {description['content_hash']}")
    return 0


def _embed_options(args: argparse.Namespace, token_budget: int):  # -> EmbedOptions
    from embeddings.options import EmbedOptions, TaskEmbOptions

    common: dict[str, Any] = {"max_tokens_per_batch": token_budget}
    if args.max_length:
        common["max_length"] = args.max_length
    if args.method != "taskemb":
        return EmbedOptions(**common)
    return TaskEmbOptions(**common, seed=args.seed, label_source=args.labels, train_scope=args.train,
                          train_steps=args.train_steps, fisher=args.fisher,
                          include_parameters=args.include_parameters)


def cmd_embed(args: argparse.Namespace, settings: Settings) -> int:
    import numpy as np

    from embeddings.api import embed
    from embeddings.encoders import load_encoder, set_threads

    set_threads(settings.torch_threads)
    dataset = load_target(args, settings)
    if args.max_examples and len(dataset) > args.max_examples:
        dataset = dataset.subsample(args.max_examples, seed=args.seed)
    encoder = load_encoder(args.model or settings.model, settings.device)
    options = _embed_options(args, encoder.token_budget(settings.max_tokens_per_batch))
    with progress_bar(f"{args.method} {dataset.name}") as on_progress:
        result = embed(dataset, args.method, encoder, options, on_progress)
    summary = {
        "dataset": dataset.name, "task_type": result.task_type, "method": result.method,
        "model": result.model_name, "model_hash": result.model_hash, "dataset_hash": result.dataset_hash,
        "examples": result.num_examples, "tokens": result.num_tokens, "seconds": round(result.seconds, 2),
        "components": {name: {"dim": int(v.shape[0]), "norm": float(np.linalg.norm(v))}
                       for name, v in result.vectors.items()},
    }
    if args.out:
        summary["saved"] = str(result.save(args.out))
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"{result.method} of {dataset.name} ({result.task_type}, {result.num_examples} examples, "
              f"{result.num_tokens} tokens) with {result.model_name} in {result.seconds:.1f} s")
        for name, info in summary["components"].items():
            print(f"  {name:<28} dim {info['dim']:>6}  norm {info['norm']:.4g}")
        if args.out:
            print(f"saved {summary['saved']} (+ .json metadata)")
    return 0


def _source_folder(name: str, data_dir: Path) -> Path:
    path = Path(name)
    if path.exists():
        return path
    folder = data_dir / name
    if (folder / "task.json").is_file():
        return folder
    raise ValueError(f"source {name!r} is neither a path nor a task folder under {data_dir} (see --data-dir)")


def _source_dev(folder: Path, limits: Any) -> Any:
    """A task folder's dev split (the source regime early-stops on it); None for a file or a folder without one."""
    from embeddings.data import load_dataset

    return load_dataset(folder, split="dev", limits=limits) if (folder / "dev.jsonl").is_file() else None


def cmd_transfer(args: argparse.Namespace, settings: Settings) -> int:
    """Intermediate-task transfer, locally: each source then the target, against the no-transfer baseline."""
    from dataclasses import replace

    from embeddings.data import LoadLimits, load_dataset
    from embeddings.encoders import load_encoder, set_threads
    from embeddings.finetune import FinetuneOptions
    from embeddings.transfer import SOURCE_REGIME, TransferOptions, intermediate_transfer

    set_threads(settings.torch_threads)
    target = load_target(args, settings)
    limits = LoadLimits(max_rows=settings.max_rows, max_text_chars=settings.max_text_chars)
    target_path = Path(args.path)
    if args.dev:  # the same column mapping as the target's
        dev = load_dataset(args.dev, task_type=target.task_type, column_map=column_map(args.columns), limits=limits)
    elif target_path.is_dir():
        dev = load_dataset(target_path, split="dev", limits=limits)
    else:  # as the API does: a deterministic 20% of the target held out (per label for classification)
        from embeddings.splits import DEV_FRACTION, hold_out_dev

        target, dev = hold_out_dev(target, args.seed, hint="give --dev DEV_FILE")
        print(f"dev: {len(dev)} of {len(dev) + len(target)} rows held out ({DEV_FRACTION:.0%}; no --dev given)",
              file=sys.stderr)
    data_dir = Path(args.data_dir)
    scores: list[float] | None = None
    if args.sources:
        names = [n.strip() for n in args.sources.split(",") if n.strip()]
    elif args.top:

        with library_service(settings) as service, progress_bar(f"ranking {target.name}") as on_progress:
            ranking = service.rank(target, args.method, args.top, False, on_progress)
        names = [s.name for s in ranking.sources]
        scores = [s.score for s in ranking.sources]
        print(f"top {args.top} by {ranking.method}: {', '.join(names)}", file=sys.stderr)
    else:
        raise ValueError("give --sources a,b or --top K")
    sources = [load_dataset(_source_folder(n, data_dir), limits=limits) for n in names]
    mismatched = [s.name for s in sources if s.task_type != target.task_type]
    if mismatched and not args.all_class:
        print(f"note: {', '.join(mismatched)} differ in task type from the target; their heads are dropped anyway",
              file=sys.stderr)  # stdout stays valid JSON under --json
    base = FinetuneOptions(epochs=args.epochs, learning_rate=args.learning_rate, batch_size=args.batch_size,
                           max_length=args.max_length or 128)
    if args.transfer_method != "intermediate":
        return _multi_source(args, settings, target, dev, sources, scores, base)
    # Sources train in the practitioner regime the shipped transfer matrix measured (early-stopped on a task
    # folder's dev split), unless --source-epochs asks for the target's settings with other epochs.
    source = SOURCE_REGIME if args.source_epochs is None else replace(base, epochs=args.source_epochs)
    options = TransferOptions(target=base, source=source, seeds=tuple(range(args.seed, args.seed + args.seeds)),
                              source_max_rows=args.source_rows, target_max_rows=args.target_rows)
    source_devs = [_source_dev(_source_folder(n, data_dir), limits) if args.source_epochs is None else None
                   for n in names]
    encoder = load_encoder(args.model or settings.model, settings.device)
    with progress_bar(f"transfer to {target.name}") as on_progress:
        report = intermediate_transfer(target, dev, sources, encoder, options, source_devs=source_devs,
                                       cache_dir=settings.paths.checkpoints, on_progress=on_progress)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, default=str))
        return 0
    print(f"{report.target}: {report.main_metric} on dev, {plural(len(options.seeds), 'seed')}")
    print(f"  {'no transfer (baseline)':<28} {report.baseline_mean:7.2f} ± {report.baseline_std:.2f}")
    for outcome in sorted(report.sources, key=lambda o: -o.mean):
        print(f"  {outcome.source:<28} {outcome.mean:7.2f} ± {outcome.std:.2f}   gain {outcome.gain:+.2f} "
              f"({outcome.relative_gain:+.1f}%)")
    return 0


def _multi_source(args: argparse.Namespace, settings: Settings, target: Any, dev: Any, sources: list[Any],
                  scores: list[float] | None, base: Any) -> int:
    """`transfer --transfer-method scalearn|...`: every source combined by one multi-source method."""
    from dataclasses import replace

    from embeddings.camtl import CamtlOptions
    from embeddings.encoders import load_encoder
    from embeddings.multisource import MultiSourceOptions, multi_source_transfer
    from embeddings.source_adapters import AdapterOptions

    adapter = AdapterOptions(train=replace(base, epochs=args.source_epochs or args.epochs,
                                           learning_rate=args.adapter_learning_rate))
    options = MultiSourceOptions(
        method=args.transfer_method, target=base, combination_learning_rate=args.combination_learning_rate,
        adapter=adapter, seeds=tuple(range(args.seed, args.seed + args.seeds)), source_max_rows=args.source_rows,
        target_max_rows=args.target_rows,
        camtl=CamtlOptions(freeze_encoder_layers=args.freeze_encoder_layers, sampling=args.task_sampling))
    encoder = load_encoder(args.model or settings.model, settings.device)
    with progress_bar(f"{args.transfer_method} to {target.name}") as on_progress:
        report = multi_source_transfer(target, dev, sources, encoder, options, source_scores=scores,
                                       cache_dir=settings.paths.checkpoints, on_progress=on_progress)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, default=str))
        return 0
    print(f"{report.target}: {report.method} over {', '.join(report.sources)}; {report.main_metric} on dev, "
          f"{plural(len(options.seeds), 'seed')}")
    print(f"  {report.method:<28} {report.mean:7.2f} ± {report.std:.2f}   "
          f"{report.trained_parameters:,} trained parameters ({report.method_parameters:,} without heads)")
    if report.single_adapter_scores:
        single = sum(report.single_adapter_scores) / len(report.single_adapter_scores)
        print(f"  {'target adapter alone':<28} {single:7.2f}")
    for name, weight in (report.source_weights or {}).items():
        print(f"    {report.weight_kind or 'weight'} {name:<22} {weight:.3f}")
    return 0


def worker_command(settings: Settings, queues: str, concurrency: int, name: str) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "worker.celery_app:celery_app", "worker", "-Q", queues,
            "-c", str(concurrency), "-P", "prefork", "--loglevel", "INFO", "-n", name, "--without-gossip",
            "--without-mingle"]


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    """A real Celery worker process on the configured broker (`--queues train` on GPU hosts)."""
    import os
    import socket

    name = f"{args.queues.replace(',', '-')}@{socket.gethostname()}-{os.getpid()}"
    os.execv(sys.executable, worker_command(settings, args.queues, args.concurrency or settings.worker_concurrency,
                                            name))
    return 0  # pragma: no cover


def _prepare_shared_state(settings: Settings) -> None:
    """Create the tables and import the default library once, before the worker and API processes start."""
    from library.jobs import JobStore
    from library.service import LibraryService

    JobStore(settings.resolved_database_url).close()
    LibraryService.from_settings(settings).close()


def _die_with_parent() -> None:
    """In the forked worker (Linux): SIGTERM when `serve` exits, even by SIGKILL, so that no worker
    outlives the service it belongs to (the tests found them left behind after a hard stop)."""
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # 1 = PR_SET_PDEATHSIG
    except (AttributeError, OSError):  # not Linux: the `finally` below still stops it on a clean exit
        pass


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    """The API plus one real worker process per queue (`embed`, `train`); embedded broker and SQLite unless
    configured otherwise."""
    import signal
    import socket
    import subprocess

    import uvicorn

    from app.main import create_app

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    _prepare_shared_state(settings)  # before any worker or API process starts: no first-start races
    workers: list[subprocess.Popen] = []
    if not args.no_worker:  # one worker per queue: a ranking (embed) never waits behind a training (train)
        from worker.job_kinds import QUEUES

        for queue in QUEUES:
            command = worker_command(settings, queue, settings.worker_concurrency,
                                     f"embedded-{queue}@{socket.gethostname()}")
            workers.append(subprocess.Popen(command, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent))
    host, port = args.host or settings.host, args.port or settings.port
    broker = "embedded SQLite broker" if settings.embedded_broker else settings.resolved_broker_url.split("@")[-1]
    print(f"taskrank: http://{host}:{port}/  (API docs at /docs; data in {settings.data_dir.resolve()}; "
          f"{broker}; Ctrl-C stops)", file=sys.stderr)
    api_workers = args.api_workers or settings.api_workers
    try:
        if api_workers > 1:  # each process builds the app from the environment (Settings has no other source)
            uvicorn.run("app.main:create_app", factory=True, host=host, port=port, workers=api_workers,
                        log_level="info", access_log=settings.access_log)
        else:
            uvicorn.run(create_app(settings), host=host, port=port, log_level="info", access_log=settings.access_log)
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
        for worker in workers:
            try:
                worker.wait(timeout=20)
            except subprocess.TimeoutExpired:
                worker.kill()
    return 0


def build_parser() -> argparse.ArgumentParser:
    from embeddings.registry import EMBEDDING_METHODS, SOURCE_MAX_ROWS, TRANSFER_METHODS
    from embeddings.task_types import TASK_TYPE_NAMES
    from library.methods import DEFAULT_METHOD, RANKING_METHODS

    EMBEDDING_METHOD_NAMES = tuple(m.name for m in EMBEDDING_METHODS.values() if m.target_method is None)  # noqa: N806
    parser = argparse.ArgumentParser(prog="taskrank", description="Which source task to train on before yours.")
    sub = parser.add_subparsers(dest="command", required=True)

    def dataset_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("path", help="task folder, .jsonl, .json (SQuAD), .csv/.tsv, or CoNLL file")
        p.add_argument("--task-type", choices=TASK_TYPE_NAMES, help="default: inferred")
        p.add_argument("--split", default="train", help="split of a task folder (default train)")
        p.add_argument("--columns", help="column mapping, e.g. text=review,label=stars")
        p.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser("inspect", help="validate and describe a dataset")
    dataset_args(p)
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("embed", help="compute a task embedding (TextEmb, SEmb or TaskEmb)")
    dataset_args(p)
    p.add_argument("--method", choices=EMBEDDING_METHOD_NAMES, default="textemb")
    p.add_argument("--model", help="HF name or local path (default: bundled all-MiniLM-L6-v2)")
    p.add_argument("--max-examples", type=int, help="embed a seeded random subset of this many rows")
    p.add_argument("--max-length", type=int, help="truncation length for text and tagging (default 256)")
    p.add_argument("--out", help="save vectors (.npz) and metadata (.json) here")
    p.add_argument("--seed", type=int, default=13)
    p.add_argument("--labels", choices=["data", "sample"], default="data", help="TaskEmb: gold or sampled labels")
    p.add_argument("--train", choices=["head", "full"], default="head", help="TaskEmb: what is trained first")
    p.add_argument("--train-steps", type=int, default=100, help="TaskEmb: steps before the Fisher")
    p.add_argument("--fisher", choices=["per_example", "batch"], default="per_example")
    p.add_argument("--include-parameters", action="store_true", help="TaskEmb: also parameter Fisher")
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("transfer", help="intermediate-task transfer from sources to a target, with a baseline")
    dataset_args(p)
    p.add_argument("--sources", help="comma-separated source task names (folders under --data-dir) or paths")
    p.add_argument("--top", type=int, help="transfer from the library's top-K sources for the target")
    p.add_argument("--method", default=None, choices=RANKING_METHODS.names(),
                   help=f"ranking method for --top (default: the service's, {DEFAULT_METHOD} until learned validates)")
    p.add_argument("--all-class", action="store_true")
    p.add_argument("--dev", help="target dev file, read with --columns (a task folder uses its dev split; a "
                                 "file without --dev holds out 20%% of its rows, as the API does)")
    p.add_argument("--data-dir", default="../shared/data", help="where source task folders live")
    p.add_argument("--model")
    p.add_argument("--epochs", type=float, default=3.0)
    p.add_argument("--source-epochs", type=float, default=None,
                   help="default: the practitioner regime of the shipped transfer matrix (2 epochs, batch 32, "
                        "early-stopped on the source's dev split)")
    p.add_argument("--learning-rate", type=float, default=5e-5)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int)
    p.add_argument("--seed", type=int, default=13)
    p.add_argument("--seeds", type=int, default=2, help="target fine-tunings per source (mean and std)")
    p.add_argument("--source-rows", type=int, default=SOURCE_MAX_ROWS)
    p.add_argument("--target-rows", type=int, default=1000)
    p.add_argument("--transfer-method", default="intermediate",
                   choices=tuple(TRANSFER_METHODS),
                   help="intermediate: each source alone; the others combine all the sources (multi-source)")
    p.add_argument("--adapter-learning-rate", type=float, default=5e-4, help="multi-source: stage-1 adapters")
    p.add_argument("--combination-learning-rate", type=float, help="multi-source: stage 2 (default per method)")
    p.add_argument("--freeze-encoder-layers", type=int, help="CA-MTL: frozen lower layers (default: half)")
    p.add_argument("--task-sampling", default="uncertainty", choices=["uncertainty", "uniform", "sequential"],
                   help="CA-MTL: task sampling")
    p.set_defaults(func=cmd_transfer)

    p = sub.add_parser("serve", help="run the API and a worker per queue (embedded broker and SQLite by default)")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--no-worker", action="store_true", help="API only (workers run elsewhere)")
    p.add_argument("--api-workers", type=int, help="API processes (default TASKRANK_API_WORKERS, 1)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("worker", help="run a Celery worker on the configured broker")
    p.add_argument("--queues", default="embed,train", help="comma-separated: embed, train")
    p.add_argument("--concurrency", type=int, help="worker processes (default TASKRANK_WORKER_CONCURRENCY)")
    p.set_defaults(func=cmd_worker)

    from app import cli_library

    cli_library.register(sub, dataset_args)
    from app import cli_ranker

    cli_ranker.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from embeddings.data import DatasetError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args, get_settings()) or 0)
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
