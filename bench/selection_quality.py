"""Transfer matrix for measuring selection quality: every (source, target) pair fine-tuned for real.

For each target (a classification/regression task of `../shared/data`) and each source (every other
one), in the limited regime of Vu et al. 2020: the encoder is fine-tuned on at most
`--source-max-rows` source rows (cached per source, reused by every target), its head dropped, then
fine-tuned on at most `--target-max-rows` target rows and scored on the target's dev split; the
baseline fine-tunes the same target rows from the plain encoder with the same seed. One CSV row per
(source, target, seed), appended as soon as it is measured, so the run is resumable and can be
extended with more targets or seeds. Then

    taskrank evaluate bench/results/transfer_matrix_<model>.csv

scores TextEmb, SEmb, TaskEmb, ensemble, random and DataSize rankings against it. A JSON sidecar
(`.json` beside the CSV) records the settings, the git revision, the machine and timings.

    .venv/bin/python bench/selection_quality.py --targets rte,mrpc,stsb --seeds 13,14
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from bench.transfer_matrix import git_revision, text_tasks  # noqa: E402  (its successor; shared helpers)
from embeddings.data import Dataset, LoadLimits, TaskType, load_dataset  # noqa: E402
from embeddings.encoders import load_encoder, set_threads  # noqa: E402
from embeddings.finetune import FinetuneOptions, fine_tune  # noqa: E402
from embeddings.transfer import TransferOptions, source_encoder_state  # noqa: E402

_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = _ROOT.parent / "shared" / "data"
RESULTS_DIR = _ROOT / "bench" / "results"
TEXT_TASKS = (TaskType.CLASSIFICATION, TaskType.REGRESSION)
COLUMNS = ["source", "target", "seed", "score", "baseline_score", "metric", "source_rows", "target_rows",
           "dev_rows", "seconds", "git_rev"]


@dataclass(frozen=True)
class MatrixSettings:
    """The regime; every run of one CSV must share it (checked against the sidecar)."""

    model: str = "default"
    target_max_rows: int = 1000
    source_max_rows: int = 3000
    dev_max_rows: int = 1000
    target_epochs: float = 3.0
    source_epochs: float = 1.0
    learning_rate: float = 5e-5
    batch_size: int = 32
    max_length: int = 128
    data_seed: int = 13

    def transfer_options(self, seeds: tuple[int, ...]) -> TransferOptions:
        target = FinetuneOptions(epochs=self.target_epochs, learning_rate=self.learning_rate,
                                 batch_size=self.batch_size, max_length=self.max_length)
        return TransferOptions(target=target, source=replace(target, epochs=self.source_epochs), seeds=seeds,
                               source_max_rows=self.source_max_rows, target_max_rows=self.target_max_rows,
                               data_seed=self.data_seed)


def done_runs(path: Path) -> set[tuple[str, str, int]]:
    if not path.is_file():
        return set()
    with path.open(newline="") as fh:
        return {(r["source"], r["target"], int(r["seed"])) for r in csv.DictReader(fh)}


def check_sidecar(path: Path, settings: MatrixSettings) -> dict[str, Any]:
    """An existing matrix may only be extended under the same regime."""
    if not path.is_file():
        return {"settings": asdict(settings), "runs": []}
    sidecar = json.loads(path.read_text())
    if sidecar.get("settings") != asdict(settings):
        raise SystemExit(f"{path} was measured under other settings {sidecar.get('settings')}; "
                         "use another --out or the same settings")
    return sidecar


def append_row(path: Path, row: dict[str, Any]) -> None:
    new = not path.is_file()
    with path.open("a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        if new:
            writer.writeheader()
        writer.writerow(row)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--targets", default="", help="comma-separated targets (default: every text task)")
    parser.add_argument("--sources", default="", help="comma-separated sources (default: every other text task)")
    parser.add_argument("--seeds", default="13,14")
    parser.add_argument("--out", default="", help="CSV path (default bench/results/transfer_matrix_<model>.csv)")
    parser.add_argument("--cache", default=str(_ROOT / "var" / "bench-checkpoints"),
                        help="source checkpoint cache (shared across runs)")
    parser.add_argument("--threads", type=int, default=0)
    for f in MatrixSettings.__dataclass_fields__.values():
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default)
    args = parser.parse_args()
    settings = MatrixSettings(**{f: getattr(args, f) for f in MatrixSettings.__dataclass_fields__})
    data_dir = Path(args.data)
    if not data_dir.is_dir():
        raise SystemExit(f"no data at {data_dir} (expected the ../shared/data layout)")
    set_threads(args.threads)
    torch.manual_seed(settings.data_seed)
    everything = text_tasks(data_dir)
    targets = [t for t in args.targets.split(",") if t] or everything
    sources = [s for s in args.sources.split(",") if s] or everything
    seeds = tuple(int(s) for s in args.seeds.split(","))
    model_slug = "minilm" if settings.model == "default" else Path(settings.model).name.replace("/", "_")
    out = Path(args.out or RESULTS_DIR / f"transfer_matrix_{model_slug}.csv")
    sidecar_path = out.with_suffix(".json")
    out.parent.mkdir(parents=True, exist_ok=True)
    sidecar = check_sidecar(sidecar_path, settings)
    sidecar_path.write_text(json.dumps(sidecar, indent=2) + "\n")
    done = done_runs(out)
    rev = git_revision()
    encoder = load_encoder(settings.model)
    options = settings.transfer_options(seeds)
    limits = LoadLimits(max_rows=10**7)
    cache: dict[str, Dataset] = {}

    def data(name: str, split: str = "train") -> Dataset:
        key = f"{name}/{split}"
        if key not in cache:
            cache[key] = load_dataset(data_dir / name, split=split, limits=limits)
        return cache[key]

    started = time.perf_counter()
    timings: dict[str, float] = {"source_fine_tuning_s": 0.0, "target_fine_tuning_s": 0.0}
    run_record: dict[str, Any] = {}
    sidecar["runs"].append(run_record)

    def record(finished: bool) -> None:
        """The sidecar is rewritten after every target, so a stopped run still says what it did."""
        run_record.update({
            "finished": datetime.now(UTC).isoformat(timespec="seconds") if finished else None,
            "updated": datetime.now(UTC).isoformat(timespec="seconds"), "git_rev": rev, "targets": targets,
            "sources": sources, "seeds": list(seeds), "wall_s": round(time.perf_counter() - started, 1),
            **{k: round(v, 1) for k, v in timings.items()},
            "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                        "device": str(encoder.device), "python": platform.python_version(),
                        "torch": torch.__version__, "load_avg": [round(x, 2) for x in os.getloadavg()]},
            "model": {"name": encoder.name, "weights_hash": encoder.weights_hash},
        })
        sidecar_path.write_text(json.dumps(sidecar, indent=2) + "\n")

    for target in targets:
        train = data(target).subsample(settings.target_max_rows, settings.data_seed)
        dev = data(target, "dev").subsample(settings.dev_max_rows, settings.data_seed)
        pending = [(s, seed) for s in sources if s != target for seed in seeds if (s, target, seed) not in done]
        if not pending:
            continue
        baselines: dict[int, float] = {}
        for seed in sorted({seed for _, seed in pending}):
            t = time.perf_counter()
            result, _ = fine_tune(train, dev, encoder, replace(options.target, seed=seed))
            timings["target_fine_tuning_s"] += time.perf_counter() - t
            baselines[seed] = result.score
            print(json.dumps({"target": target, "seed": seed, "baseline": round(result.score, 2),
                              "seconds": round(time.perf_counter() - t, 1)}), file=sys.stderr, flush=True)
        for source in dict.fromkeys(s for s, _ in pending):
            t = time.perf_counter()
            state, _ = source_encoder_state(data(source), encoder, options, args.cache)
            timings["source_fine_tuning_s"] += time.perf_counter() - t
            for seed in [seed for s, seed in pending if s == source]:
                t = time.perf_counter()
                result, _ = fine_tune(train, dev, encoder, replace(options.target, seed=seed),
                                      initial_encoder_state=state)
                seconds = time.perf_counter() - t
                timings["target_fine_tuning_s"] += seconds
                row = {"source": source, "target": target, "seed": seed, "score": round(result.score, 4),
                       "baseline_score": round(baselines[seed], 4), "metric": result.main_metric,
                       "source_rows": min(len(data(source)), settings.source_max_rows), "target_rows": len(train),
                       "dev_rows": len(dev), "seconds": round(seconds, 1), "git_rev": rev}
                append_row(out, row)
                print(json.dumps(row), file=sys.stderr, flush=True)
            del state
        record(finished=False)
    record(finished=True)
    print(json.dumps({"csv": str(out), "rows": len(done_runs(out)), **run_record}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
