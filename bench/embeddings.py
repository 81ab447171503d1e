"""Benchmark of TextEmb, SEmb and TaskEmb: the fast path against the naive (Vu et al. 2020 style) baseline.

Prints one JSON document to stdout and writes it to `bench/results/embeddings_<device>.json`; progress
goes to stderr. Run as `python bench/embeddings.py` (or `python -m bench.embeddings`) with
HF_HUB_OFFLINE=1; `--quick` is a smoke run on small slices.

The naive baseline is the same code under options that mimic the original implementation: every batch
padded to 128 tokens, 32 rows per batch in data order, and for TaskEmb the Fisher of the batch-summed
gradient. Peak memory is measured in fresh subprocesses (a hidden `--rss-probe ROWS METHOD` mode).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# `python bench/embeddings.py` puts bench/ first on sys.path, where this very file would shadow the
# `embeddings` package: the repository root must come before it.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

from embeddings.data import Dataset, load_dataset
from embeddings.encoders import Encoder, load_encoder
from embeddings.features import collate, tokenize
from embeddings.options import EmbedOptions, TaskEmbOptions
from embeddings.result import EmbeddingResult
from embeddings.taskemb import fisher_embedding
from embeddings.textemb import plan_batches, text_and_sentence_embeddings

_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = _ROOT.parent / "shared" / "data"
RESULTS_DIR = _ROOT / "bench" / "results"
SEED = 13
NAIVE_PAD_TO = 128
NAIVE_BATCH_SIZE = 32
FLOPS_FORMULA = (
    "sum over batches of B*T*L*(2*(4*H*H + 2*H*I) + 2*2*T*H); B rows, T padded length of the batch, "
    "L layers, H hidden size, I intermediate size. 2*(4*H*H + 2*H*I): Q/K/V/attention-output and the two "
    "feed-forward matmuls per token; 2*2*T*H: attention scores (QK^T) and context (AV) per token. "
    "Embeddings, layer norms, softmax, GELU and pooling are not counted. Seconds are the whole "
    "text_and_sentence_embeddings call (tokenisation included)."
)


@dataclass(frozen=True)
class Plan:
    """Sizes of one benchmark run."""

    polarity_rows: int
    rte_rows: int
    memory_rows: tuple[int, int]
    matmul_size: int
    matmul_repeats: int
    repeats: int
    warmup_rows: int


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------- machine


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_revision() -> dict[str, Any]:
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=_ROOT, capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    revision = git("rev-parse", "--short", "HEAD") or "unknown"
    status = git("status", "--porcelain")
    return {"git_revision": revision, "git_dirty": None if status is None else bool(status)}


def machine_info(device: torch.device) -> dict[str, Any]:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    return {
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "device": device.type,
        "device_name": name,
        **git_revision(),
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "loadavg_start": list(os.getloadavg()),
    }


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, size: int, repeats: int) -> dict[str, Any]:
    """Best GFLOP/s of `torch.mm` on two square matrices: fp32 on CPU, bf16 on CUDA."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    inner = 20 if device.type == "cuda" else 1  # one CUDA matmul is too short to time alone
    generator = torch.Generator(device=device).manual_seed(SEED)
    a = torch.randn(size, size, device=device, dtype=dtype, generator=generator)
    b = torch.randn(size, size, device=device, dtype=dtype, generator=generator)
    out = torch.mm(a, b)  # warm-up
    synchronize(device)
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(inner):
            torch.mm(a, b, out=out)
        synchronize(device)
        rates.append(2.0 * size**3 * inner / (time.perf_counter() - started) / 1e9)
    del a, b, out
    return {"size": size, "dtype": str(dtype).removeprefix("torch."), "repeats": repeats,
            "gflops_each": [round(r, 1) for r in rates], "gflops_best": max(rates)}


# ------------------------------------------------------------------------------------------ options


def fast_options(encoder: Encoder) -> EmbedOptions:
    return EmbedOptions(max_tokens_per_batch=encoder.token_budget())


def naive_options() -> EmbedOptions:
    return EmbedOptions(pad_to=NAIVE_PAD_TO, fixed_batch_size=NAIVE_BATCH_SIZE)


def fast_task_options(encoder: Encoder, train_steps: int | None = None) -> TaskEmbOptions:
    """Default TaskEmbOptions (train_steps=100 unless given) with the device's batch budget."""
    steps = {} if train_steps is None else {"train_steps": train_steps}
    return TaskEmbOptions(max_tokens_per_batch=encoder.token_budget(), **steps)


def naive_task_options(train_steps: int | None = None) -> TaskEmbOptions:
    """The naive baseline differs from the default only in padding, batching and the batch Fisher."""
    steps = {} if train_steps is None else {"train_steps": train_steps}
    return TaskEmbOptions(pad_to=NAIVE_PAD_TO, fixed_batch_size=NAIVE_BATCH_SIZE, fisher="batch", **steps)


# ------------------------------------------------------------------------------------------ timing


@dataclass(frozen=True)
class Timing:
    seconds: float
    cpu_seconds: float  # this process's CPU time over the same call: cpu/wall below the thread count = contention
    examples: int
    tokens: int  # real (unpadded) tokens of the dataset
    padded_tokens: int

    def to_dict(self) -> dict[str, Any]:
        return {"seconds": round(self.seconds, 3), "examples_per_s": round(self.examples / self.seconds, 2),
                "tokens_per_s": round(self.tokens / self.seconds, 1), "padded_tokens": self.padded_tokens,
                "cpu_seconds": round(self.cpu_seconds, 2),
                "cpu_per_wall": round(self.cpu_seconds / self.seconds, 2)}


def timed(device: torch.device, repeats: int, fn: Callable[[], Any]) -> tuple[tuple[float, float], Any]:
    """(wall, CPU) seconds of the fastest of `repeats` calls, and the last call's return value."""
    best, value = (float("inf"), 0.0), None
    for _ in range(repeats):
        gc.collect()
        synchronize(device)
        started, cpu_started = time.perf_counter(), time.process_time()
        value = fn()
        synchronize(device)
        elapsed = (time.perf_counter() - started, time.process_time() - cpu_started)
        best = min(best, elapsed)
    return best, value


def padded_shapes(dataset: Dataset, encoder: Encoder, options: EmbedOptions) -> list[tuple[int, int]]:
    """(rows, padded length) of every batch the forward pass sees, rebuilt exactly as the core builds them."""
    features = tokenize(dataset, encoder.tokenizer, options)
    shapes = []
    for index in plan_batches(features, options):
        batch = collate(features, index, encoder.device, pad_to=options.pad_to, with_labels=False)
        shapes.append((int(batch.input_ids.shape[0]), int(batch.input_ids.shape[1])))
    return shapes


def forward_flops(encoder: Encoder, shapes: list[tuple[int, int]]) -> float:
    config = encoder.model.config
    h, inter, layers = int(config.hidden_size), int(config.intermediate_size), int(config.num_hidden_layers)
    return float(sum(b * t * layers * (2 * (4 * h * h + 2 * h * inter) + 2 * 2 * t * h) for b, t in shapes))


def compare(fast: Timing, naive: Timing) -> dict[str, Any]:
    """`speedup` is the wall-time ratio; `speedup_cpu`, the CPU-time ratio, is steadier on a shared machine."""
    return {"fast": fast.to_dict(), "naive": naive.to_dict(), "speedup": round(naive.seconds / fast.seconds, 3),
            "speedup_cpu": round(naive.cpu_seconds / max(fast.cpu_seconds, 1e-9), 3)}


def relative_difference(a: EmbeddingResult, b: EmbeddingResult) -> float:
    worst = 0.0
    for name, va in a.vectors.items():
        vb = b.vectors[name]
        worst = max(worst, float(np.abs(va - vb).max() / max(np.abs(vb).max(), 1e-12)))
    return worst


def bench_dataset(name: str, dataset: Dataset, encoder: Encoder, repeats: int) -> dict[str, Any]:
    device = encoder.device
    _ = dataset.content_hash  # cached on first use: keep it out of whichever run would come first
    fast, naive = fast_options(encoder), naive_options()
    shapes = {"fast": padded_shapes(dataset, encoder, fast), "naive": padded_shapes(dataset, encoder, naive)}
    padded = {k: sum(b * t for b, t in v) for k, v in shapes.items()}
    tokens = tokenize(dataset, encoder.tokenizer, fast).num_tokens
    rows = len(dataset)

    def timing(seconds: tuple[float, float], kind: str) -> Timing:
        return Timing(seconds[0], seconds[1], rows, tokens, padded[kind])

    out: dict[str, Any] = {"split": "train", "rows": rows, "seed": SEED, "tokens": tokens,
                           "padded_tokens": padded,
                           "batches": {k: len(v) for k, v in shapes.items()}}

    log(f"{name}: textemb+semb fast ({rows} rows, {tokens} tokens, {padded['fast']} padded)")
    t_fast, (text_fast, sent_fast) = timed(device, repeats,
                                           lambda: text_and_sentence_embeddings(dataset, encoder, fast))
    log(f"{name}: textemb+semb fast {t_fast[0]:.2f}s; naive ({padded['naive']} padded tokens)")
    t_naive, (text_naive, sent_naive) = timed(device, repeats,
                                              lambda: text_and_sentence_embeddings(dataset, encoder, naive))
    log(f"{name}: textemb+semb naive {t_naive[0]:.2f}s")
    out["textemb"] = compare(timing(t_fast, "fast"), timing(t_naive, "naive"))
    out["textemb"]["max_rel_diff_fast_vs_naive"] = relative_difference(text_fast, text_naive)
    out["semb"] = compare(timing(t_fast, "fast"), timing(t_naive, "naive"))
    out["semb"]["max_rel_diff_fast_vs_naive"] = relative_difference(sent_fast, sent_naive)
    out["semb"]["note"] = ("SEmb and TextEmb come from one pass (text_and_sentence_embeddings); "
                           "these are that same pass's timings, not a separate run.")
    out["forward_gflop"] = {k: forward_flops(encoder, v) / 1e9 for k, v in shapes.items()}

    for key, steps in (("taskemb", None), ("taskemb_fisher_only", 0)):
        fast_t, naive_t = fast_task_options(encoder, steps), naive_task_options(steps)
        log(f"{name}: {key} fast (train_steps={fast_t.train_steps})")
        t_fast, _ = timed(device, repeats, lambda o=fast_t: fisher_embedding(dataset, encoder, o))
        log(f"{name}: {key} fast {t_fast[0]:.2f}s; naive")
        t_naive, _ = timed(device, repeats, lambda o=naive_t: fisher_embedding(dataset, encoder, o))
        log(f"{name}: {key} naive {t_naive[0]:.2f}s")
        out[key] = compare(timing(t_fast, "fast"), timing(t_naive, "naive"))
        out[key]["train_steps"] = fast_t.train_steps
    out["taskemb"]["note"] = (
        "Default TaskEmbOptions (100 head-training steps on cached final-layer states, then the Fisher pass). "
        "Naive differs only in pad_to=128, fixed_batch_size=32, fisher='batch'; the head-training forward "
        "pass does not read pad_to/fixed_batch_size, so it is the same in both runs.")
    out["taskemb_fisher_only"]["note"] = "train_steps=0 for both: the Fisher accumulation pass alone."
    return out


def warm_up(dataset: Dataset, encoder: Encoder, rows: int) -> None:
    """Touch every code path once on a tiny slice: lazy initialisation stays out of the timings."""
    tiny = dataset.subsample(rows, SEED)
    for options in (fast_options(encoder), naive_options()):
        text_and_sentence_embeddings(tiny, encoder, options)
    for task_options in (fast_task_options(encoder), naive_task_options(),
                         fast_task_options(encoder, 0), naive_task_options(0)):
        fisher_embedding(tiny, encoder, task_options)
    synchronize(encoder.device)


# ------------------------------------------------------------------------------------------ memory


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def _vm_hwm_mb() -> float | None:
    """The kernel's high-water mark of this process's own address space (a cross-check of ru_maxrss)."""
    try:
        with open("/proc/self/status", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def rss_probe(data: Path, rows: int, method: str, device: str) -> None:
    """Runs in a fresh process: load sst2 train, subsample, embed, print the peak RSS in MB."""
    encoder = load_encoder("default", device)
    dataset = load_dataset(data / "sst2", split="train").subsample(rows, SEED)
    before = _peak_rss_mb()
    if method == "textemb":
        text_and_sentence_embeddings(dataset, encoder, fast_options(encoder))
    elif method == "taskemb":
        fisher_embedding(dataset, encoder, fast_task_options(encoder))
    else:
        raise SystemExit(f"unknown probe method {method!r}")
    print(json.dumps({"rows": len(dataset), "method": method, "peak_rss_mb": _peak_rss_mb(),
                      "peak_rss_before_embedding_mb": before, "vm_hwm_mb": _vm_hwm_mb()}), flush=True)


# Linux keeps ru_maxrss across execve, and a child started straight from this (large) process would
# report this process's peak. A small intermediate Python forks the probe, so the probe's ru_maxrss
# starts from the intermediate's few megabytes.
_LAUNCHER = "import subprocess, sys; sys.exit(subprocess.call(sys.argv[1:]))"


def measure_memory(data: Path, rows: tuple[int, int], device: str) -> dict[str, Any]:
    small, large = rows
    out: dict[str, Any] = {
        "dataset": "sst2", "split": "train", "seed": SEED, "rows": list(rows),
        "note": ("Peak RSS (getrusage ru_maxrss) of a fresh process that loads the encoder and the whole sst2 "
                 "train split, subsamples, and embeds with the fast options; the raw rows of the larger "
                 "subsample are part of the measurement. before_embedding: peak after loading the encoder and "
                 "the data; vm_hwm: /proc/self/status VmHWM as a cross-check."),
    }
    for method in ("textemb", "taskemb"):
        peaks: dict[str, float] = {}
        details: dict[str, dict[str, float | None]] = {}
        for n in rows:
            log(f"memory: {method} on {n} rows (fresh process)")
            command = [sys.executable, "-c", _LAUNCHER, sys.executable, str(Path(__file__).resolve()),
                       "--rss-probe", str(n), method, "--device", device, "--data", str(data)]
            done = subprocess.run(command, cwd=_ROOT, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"rss probe {method} {n} failed:\n{done.stderr[-4000:]}")
            report = json.loads([line for line in done.stdout.splitlines() if line.strip()][-1])
            peaks[str(n)] = round(float(report["peak_rss_mb"]), 1)
            details[str(n)] = {"before_embedding_mb": round(float(report["peak_rss_before_embedding_mb"]), 1),
                               "vm_hwm_mb": None if report["vm_hwm_mb"] is None else round(report["vm_hwm_mb"], 1)}
            log(f"memory: {method} on {n} rows: {peaks[str(n)]:.1f} MB")
        out[method] = {"peak_rss_mb": peaks, "ratio_10k_over_1k": round(peaks[str(large)] / peaks[str(small)], 4),
                       "detail": details}
    return out


# ------------------------------------------------------------------------------------------ main


def target(value: float, threshold: float, at_least: bool) -> dict[str, Any]:
    met = value >= threshold if at_least else value <= threshold
    return {"value": round(value, 4), "threshold": threshold, "comparison": ">=" if at_least else "<=",
            "met": bool(met)}


def output_path(args: argparse.Namespace, device: torch.device) -> Path:
    return args.output or RESULTS_DIR / f"embeddings_{device.type}.json"


def write(result: dict[str, Any], path: Path) -> str:
    text = json.dumps(result, indent=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")
    return text


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    plan = (Plan(polarity_rows=200, rte_rows=min(args.rows_rte, 100), memory_rows=(100, 1_000),
                 matmul_size=2048, matmul_repeats=3, repeats=1, warmup_rows=8)
            if args.quick else
            Plan(polarity_rows=2_000, rte_rows=args.rows_rte, memory_rows=(1_000, 10_000),
                 matmul_size=4096, matmul_repeats=5, repeats=args.repeats, warmup_rows=16))
    data: Path = args.data
    log(f"loading encoder on {args.device}")
    encoder = load_encoder("default", args.device)
    _ = encoder.weights_hash  # computed once per process: not part of any timing
    device = encoder.device
    result: dict[str, Any] = {"benchmark": "embeddings", "quick": args.quick, "complete": False,
                              "machine": machine_info(device)}
    output = output_path(args, device)

    log(f"matmul peak ({plan.matmul_size}^2)")
    matmul = matmul_peak(device, plan.matmul_size, plan.matmul_repeats)
    result["matmul_peak_gflops"] = round(matmul["gflops_best"], 1)
    result["matmul"] = matmul
    log(f"matmul peak {matmul['gflops_best']:.1f} GFLOP/s")

    datasets = {
        "sentence_polarity": load_dataset(data / "sentence_polarity", split="train").subsample(plan.polarity_rows,
                                                                                              SEED),
        "rte": load_dataset(data / "rte", split="train").subsample(plan.rte_rows, SEED),
    }
    log("warm-up")
    warm_up(datasets["sentence_polarity"], encoder, plan.warmup_rows)
    warm_up(datasets["rte"], encoder, plan.warmup_rows)

    result["options"] = {
        "fast": fast_options(encoder).to_dict(),
        "naive": naive_options().to_dict(),
        "taskemb_fast": {**fast_task_options(encoder).to_dict(), "components": list(TaskEmbOptions().components)},
        "taskemb_naive": {**naive_task_options().to_dict(), "components": list(TaskEmbOptions().components)},
        "repeats": plan.repeats,
        "timing": ("wall time of one library call (best of `repeats`), tokenisation included; model load, "
                   "dataset load, weights hash and dataset hash excluded; examples_per_s and tokens_per_s "
                   "count the dataset's rows and real (unpadded) tokens"),
    }
    result["datasets"] = {}
    for name, ds in datasets.items():
        result["datasets"][name] = bench_dataset(name, ds, encoder, plan.repeats)
        write(result, output)  # a checkpoint ("complete": false) in case the run is cut short

    polarity = result["datasets"]["sentence_polarity"]
    gflop = polarity["forward_gflop"]["fast"]
    achieved = gflop / polarity["textemb"]["fast"]["seconds"]
    share = achieved / matmul["gflops_best"]
    result["textemb_matmul_share"] = round(share, 4)
    result["textemb_flops"] = {"dataset": "sentence_polarity", "gflop": round(gflop, 2),
                               "padded_tokens": polarity["padded_tokens"]["fast"],
                               "achieved_gflops": round(achieved, 2), "matmul_peak_gflops": matmul["gflops_best"]}
    result["flops_formula"] = FLOPS_FORMULA

    if args.skip_memory:
        result["memory"] = None
    else:
        result["memory"] = measure_memory(data, plan.memory_rows, device.type)

    targets = {
        "textemb_speedup_sentence_polarity": target(polarity["textemb"]["speedup"], 3.0, True),
        "taskemb_speedup_sentence_polarity": target(polarity["taskemb"]["speedup"], 3.0, True),
        "textemb_matmul_share": target(share, 0.40, True),
    }
    if result["memory"] is not None:
        for method in ("textemb", "taskemb"):
            targets[f"{method}_rss_ratio_10k_over_1k"] = target(result["memory"][method]["ratio_10k_over_1k"],
                                                                1.10, False)
    result["targets"] = {**targets, "all_met": all(t["met"] for t in targets.values())}
    result["machine"]["loadavg_end"] = list(os.getloadavg())
    result["total_seconds"] = round(time.perf_counter() - started, 1)
    result["complete"] = True
    return result


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="Small slices: a smoke run of every code path.")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda.")
    parser.add_argument("--rows-rte", type=int, default=1_000, help="RTE train rows (default 1000).")
    parser.add_argument("--repeats", type=int, default=1, help="Timed calls per measurement; the best is kept.")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="Folder of the shared task data.")
    parser.add_argument("--output", type=Path, default=None,
                        help="Where to write the JSON (default bench/results/embeddings_<device>.json).")
    parser.add_argument("--skip-memory", action="store_true", help="Leave out the RSS subprocess probes.")
    parser.add_argument("--rss-probe", nargs=2, metavar=("ROWS", "METHOD"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.rss_probe:
        rss_probe(args.data, int(args.rss_probe[0]), args.rss_probe[1], args.device)
        return 0
    result = run(args)
    output = output_path(args, torch.device(result["machine"]["device"]))
    text = write(result, output)
    log(f"wrote {output} in {result['total_seconds']:.0f}s")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
