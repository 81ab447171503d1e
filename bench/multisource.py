"""Multi-source transfer benchmark: single- and multi-source methods on the library's top-k sources.

For each target (default rte, mrpc, stsb of ../shared/data), the shipped default library ranks its
sources from the target's stored embeddings (ensemble: TextEmb + SEmb + TaskEmb fused; the target
itself excluded; all task types unless --same-type, since stsb is the only regression task) and the
top --top-k (4) are used. Then, over --seeds, with the target's training rows capped at --max-rows
and its dev split (capped at --dev-rows) as the score:

  fine_tuning       single-task fine-tuning of the whole encoder (the no-transfer baseline)
  adapter           the target's own bottleneck adapter on the frozen encoder (stage 1)
  intermediate      intermediate-task transfer from the top source (Vu et al. 2020)
  scalearn, scalearn_uniform, adapterfusion, pemt     two-stage methods over the source adapters
  camtl             joint multi-task training with task-conditioned modules

Reported per method: dev score per seed, mean and std, trained parameters (stage 2, heads included;
for fine_tuning and intermediate the whole encoder), and wall time per seed (stage 2 only; stage 1 -
source adapters, the source's fine-tuning for intermediate - is reported once, under `stage1`,
because it is cached and shared by every method and target). Stage-1 results are cached under
--cache and reused by later runs; their time is then 0 in `stage1` (the sidecars keep the original).

Prints one JSON document to stdout and writes it to bench/results/multisource_<model>.json (rewritten
after every method, `"complete": false` until the run ends, so an interrupted run keeps what it
measured); progress goes to stderr. A CPU-sized run:

    .venv/bin/python bench/multisource.py --targets rte --seeds 13 --max-rows 200 --source-rows 200 \\
        --dev-rows 200 --epochs 1 --max-length 64
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from embeddings.camtl import CamtlOptions  # noqa: E402
from embeddings.data import Dataset, LoadLimits, TaskType, load_dataset  # noqa: E402
from embeddings.encoders import load_encoder, set_threads  # noqa: E402
from embeddings.finetune import FinetuneOptions, fine_tune  # noqa: E402
from embeddings.multisource import MultiSourceOptions, multi_source_transfer  # noqa: E402
from embeddings.source_adapters import AdapterOptions, target_adapter  # noqa: E402
from embeddings.transfer import TransferOptions, source_encoder_state  # noqa: E402

_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = _ROOT.parent / "shared" / "data"
RESULTS_DIR = _ROOT / "bench" / "results"
METHODS = ("fine_tuning", "adapter", "intermediate", "scalearn", "scalearn_uniform", "adapterfusion", "pemt",
           "camtl")
MULTI = ("scalearn", "scalearn_uniform", "adapterfusion", "pemt", "camtl")


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def git_revision() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=_ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def recommended_sources(target: str, top_k: int, all_class: bool) -> list[dict[str, Any]]:
    """The shipped library's top-k sources for a library task, ranked from its stored embeddings."""
    from library.service import LibraryService, stored_targets
    from library.settings import Settings

    with tempfile.TemporaryDirectory() as folder, \
            LibraryService.from_settings(Settings(data_dir=Path(folder))) as service:
        task = service.store.get_task(target)
        if task is None:
            raise SystemExit(f"{target!r} is not a task of the shipped library")
        stored = stored_targets(service.store, task)
        ranking = service.library.rank(stored, "ensemble", top_k=top_k, all_class=all_class)
        return [{"name": s.name, "rank": s.rank, "score": s.score, "task_type": s.task_type}
                for s in ranking.sources]


def summary(scores: list[float], params: int | None, seconds: list[float], **extra: Any) -> dict[str, Any]:
    return {"scores": [round(s, 4) for s in scores], "mean": round(statistics.fmean(scores), 4),
            "std": round(statistics.stdev(scores), 4) if len(scores) > 1 else 0.0, "trained_parameters": params,
            "seconds_per_seed": round(statistics.fmean(seconds), 2), **extra}


def trainable(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--targets", default="rte,mrpc,stsb")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"subset of {','.join(METHODS)}")
    parser.add_argument("--seeds", default="13,14,15")
    parser.add_argument("--top-k", type=int, default=4, help="sources from the library's ranking")
    parser.add_argument("--same-type", action="store_true", help="only sources of the target's task type")
    parser.add_argument("--max-rows", type=int, default=1000, help="target training rows")
    parser.add_argument("--source-rows", type=int, help="rows per source (default: --max-rows)")
    parser.add_argument("--dev-rows", type=int, default=1000)
    parser.add_argument("--epochs", type=float, default=3.0, help="target epochs (every method)")
    parser.add_argument("--source-epochs", type=float, help="source adapters / source fine-tuning (default --epochs)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=5e-5, help="full fine-tuning (and CA-MTL's layers)")
    parser.add_argument("--adapter-learning-rate", type=float, default=5e-4)
    parser.add_argument("--model", default="default")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--cache", default=str(_ROOT / "var" / "bench-checkpoints"),
                        help="stage-1 cache (source adapters and checkpoints), shared across runs")
    parser.add_argument("--out", default="", help="JSON path (default bench/results/multisource_<model>.json)")
    args = parser.parse_args()
    methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise SystemExit(f"unknown methods {unknown}; expected some of {', '.join(METHODS)}")
    data_dir = Path(args.data)
    if not (data_dir / "MANIFEST.json").is_file():
        raise SystemExit(f"no data at {data_dir} (expected the ../shared/data layout)")
    set_threads(args.threads)
    seeds = tuple(int(s) for s in args.seeds.split(","))
    source_rows = args.source_rows or args.max_rows
    source_epochs = args.source_epochs or args.epochs
    base = FinetuneOptions(epochs=args.epochs, learning_rate=args.learning_rate, batch_size=args.batch_size,
                           max_length=args.max_length)
    adapter = AdapterOptions(train=replace(base, epochs=source_epochs, learning_rate=args.adapter_learning_rate))
    model_slug = "minilm" if args.model == "default" else Path(args.model).name.replace("/", "_")
    out = Path(args.out or RESULTS_DIR / f"multisource_{model_slug}.json")
    encoder = load_encoder(args.model, args.device)
    cache = Path(args.cache)
    limits = LoadLimits(max_rows=10**7)
    loaded: dict[str, Dataset] = {}

    def data(name: str, split: str = "train") -> Dataset:
        if f"{name}/{split}" not in loaded:
            loaded[f"{name}/{split}"] = load_dataset(data_dir / name, split=split, limits=limits)
        return loaded[f"{name}/{split}"]

    started = time.perf_counter()
    revision = git_revision()  # the code that runs, not the checkout at the end
    results: dict[str, Any] = {}

    def document(finished: bool) -> dict[str, Any]:
        return {
            "benchmark": "multisource", "model": args.model, "model_hash": encoder.weights_hash,
            "device": str(encoder.device), "git_rev": revision, "complete": finished,
            "finished": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": {"platform": platform.platform(), "python": platform.python_version(),
                        "torch": torch.__version__, "threads": torch.get_num_threads(), "cpus": os.cpu_count()},
            "regime": {"seeds": list(seeds), "top_k": args.top_k, "all_class": not args.same_type,
                       "max_rows": args.max_rows, "source_rows": source_rows, "dev_rows": args.dev_rows,
                       "epochs": args.epochs, "source_epochs": source_epochs, "batch_size": args.batch_size,
                       "max_length": args.max_length, "learning_rate": args.learning_rate,
                       "adapter_learning_rate": args.adapter_learning_rate, "methods": methods},
            "wall_s": round(time.perf_counter() - started, 1), "targets": results}

    def save(finished: bool = False) -> dict[str, Any]:
        """Written after every method, so an interrupted run keeps what it measured."""
        written = document(finished)
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = out.with_suffix(".tmp")
        partial.write_text(json.dumps(written, indent=2) + "\n")
        partial.replace(out)
        return written
    for target in [t for t in args.targets.split(",") if t]:
        ranked = recommended_sources(target, args.top_k, all_class=not args.same_type)
        names = [s["name"] for s in ranked]
        log(f"{target}: top {len(names)} sources {names}")
        train = data(target).subsample(args.max_rows, 13)
        dev = data(target, "dev").subsample(args.dev_rows, 13)
        sources = [data(n) for n in names]
        entry: dict[str, Any] = {"sources": ranked, "train_rows": len(train), "dev_rows": len(dev), "methods": {},
                                 "stage1": {}}
        results[target] = entry
        if "fine_tuning" in methods:
            runs = []
            for seed in seeds:
                result, model = fine_tune(train, dev, encoder, replace(base, seed=seed))
                runs.append(result)
                log(f"{target} fine_tuning seed {seed}: {result.score:.2f} ({result.seconds:.0f}s)")
            entry["methods"]["fine_tuning"] = summary([r.score for r in runs], trainable(model),
                                                      [r.seconds for r in runs], metric=runs[0].main_metric)
            save()
        if "adapter" in methods or {"scalearn", "scalearn_uniform", "adapterfusion"} & set(methods):
            scores, seconds, params = [], [], None
            for seed in seeds:  # cached: ScaLearn and AdapterFusion below reuse these adapters
                own_options = replace(adapter, train=replace(adapter.train, epochs=args.epochs))
                own = target_adapter(train, dev, encoder, own_options, cache, seed=seed)
                assert own.result is not None
                scores.append(float(own.result["score"]))
                seconds.append(float(own.result["seconds"]))
                params = sum(v.numel() for v in own.state.values())
                log(f"{target} adapter seed {seed}: {scores[-1]:.2f} ({'cached' if own.reused else 'trained'})")
            if "adapter" in methods:
                outputs = 1 if train.task_type == TaskType.REGRESSION else len(train.labels)
                head = (encoder.hidden_size + 1) * outputs  # a classification/regression head
                entry["methods"]["adapter"] = summary(scores, (params or 0) + head, seconds,
                                                      note="seconds: the adapter's training (from its cache record)")
                save()
        if "intermediate" in methods:
            options = TransferOptions(target=base, source=replace(base, epochs=source_epochs), seeds=seeds,
                                      source_max_rows=source_rows, target_max_rows=args.max_rows)
            t = time.perf_counter()
            state, path = source_encoder_state(sources[0], encoder, options, cache)
            entry["stage1"][f"intermediate:{names[0]}"] = {"seconds": round(time.perf_counter() - t, 2),
                                                           "file": path.name}
            runs = []
            for seed in seeds:
                result, model = fine_tune(train, dev, encoder, replace(base, seed=seed), initial_encoder_state=state)
                runs.append(result)
                log(f"{target} intermediate ({names[0]}) seed {seed}: {result.score:.2f}")
            entry["methods"]["intermediate"] = summary([r.score for r in runs], trainable(model),
                                                       [r.seconds for r in runs], source=names[0])
            save()
        for method in [m for m in MULTI if m in methods]:
            options = MultiSourceOptions(method=method, target=base, adapter=adapter, seeds=seeds,
                                         source_max_rows=source_rows, target_max_rows=args.max_rows,
                                         camtl=CamtlOptions())
            report = multi_source_transfer(train, dev, sources, encoder, options, cache_dir=cache,
                                           source_scores=[s["score"] for s in ranked], source_names=names,
                                           on_stage=lambda text, t=target: log(f"{t}: {text}"))
            for a in report.adapters:
                entry["stage1"].setdefault(f"adapter:{a['source']}", {"seconds": round(a["seconds"], 2),
                                                                      "reused": a["reused"], "file": a["file"]})
            entry["methods"][method] = summary(
                report.scores, report.trained_parameters, [r["seconds"] for r in report.runs],
                method_parameters=report.method_parameters, weight_kind=report.weight_kind,
                weights={k: round(v, 4) for k, v in (report.source_weights or {}).items()},
                **({"task_examples": [r["task_examples"] for r in report.runs]} if method == "camtl" else {}))
            log(f"{target} {method}: {report.mean:.2f} ± {report.std:.2f} (seeds: "
                f"{', '.join(f'{x:.2f}' for x in report.scores)}), {report.trained_parameters:,} params")
            save()
    written = save(finished=True)
    print(json.dumps(written, indent=2))
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
