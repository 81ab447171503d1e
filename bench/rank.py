"""Ranking-index benchmark on synthetic libraries: exact IndexFlatIP and, where it matters, HNSW.

For 1k, 10k, 100k and 1M entries at 384 and 768 dimensions, through the project's `VectorIndex`:
build time, index memory, single-query p50/p99 (top-10), batched throughput (256 queries per
search). Single-query latency is measured with FAISS's default OpenMP threads and with one thread
(on a shared CPU, OpenMP threads spin-wait for each other and one thread is much faster). Where exact search is slow (100k x 768 with p99 > 5 ms) and at 1M, also HNSW
(`kind="hnsw"`): build time, memory, p50/p99 and recall@10 against exact, with efSearch raised
until recall@10 >= 0.99. HNSW builds whose estimated time exceeds the budget are skipped and said so.

Data: Gaussian with a decaying spectrum (variance 1/i along axis i), i.e. a low intrinsic dimension
like real sentence embeddings; isotropic noise, or tight clusters of near-equidistant points, would
make "the true top 10" nearly arbitrary and recall meaningless. Queries are fresh draws, never
library members.

    .venv/bin/python bench/rank.py [--quick] [--out bench/results/rank_cpu.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from library.index import IndexInfo, VectorIndex, normalize_rows  # noqa: E402

K = 10
BATCH = 256
CHUNK = 100_000
EF_SEARCH = (16, 32, 64, 128, 256, 512, 1024)
RECALL_TARGET = 0.99
HNSW_M = 32
EF_CONSTRUCTION = 80
PROBE = 20_000
FAST_PARAMS = (16, 40)  # cheaper graph when the defaults would not build within the budget


def sample(n: int, d: int, seed: int, scales: np.ndarray) -> np.ndarray:
    """n draws of N(0, diag(scales^2)): a decaying spectrum, i.e. a low intrinsic dimension."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d), dtype=np.float32)
    x *= scales
    return x


def scales_for(d: int) -> np.ndarray:
    """Standard deviation 1/sqrt(i) along axis i (participation ratio ~ 27 at d = 384, ~ 32 at 768).

    Axis-aligned, as rotations change neither inner products nor the indexes' work.
    """
    return (1.0 / np.sqrt(np.arange(1, d + 1))).astype(np.float32)


def build_index(
    kind: str,
    n: int,
    d: int,
    scales: np.ndarray,
    ef_search: int = 128,
    m: int = HNSW_M,
    ef_construction: int = EF_CONSTRUCTION,
) -> tuple[VectorIndex, float]:
    """Add n vectors in chunks (normalised by VectorIndex.add); returns (index, seconds)."""
    info = IndexInfo(
        model_name="bench", model_hash="0", method="textemb", component="text", dimension=d, kind=kind
    )
    index = VectorIndex(info, hnsw_m=m, ef_construction=ef_construction, ef_search=ef_search)
    seconds = 0.0
    for start in range(0, n, CHUNK):
        stop = min(n, start + CHUNK)
        x = sample(stop - start, d, seed=start + 7 * d, scales=scales)
        ids = np.arange(start, stop, dtype=np.int64)
        t = time.perf_counter()
        index.add(ids, x, names=[""] * len(ids))
        seconds += time.perf_counter() - t
        del x
    return index, seconds


def index_bytes(index: VectorIndex) -> int:
    """Bytes held by FAISS: vectors + id map (+ graph links for HNSW)."""
    n, d = index.ntotal, index.info.dimension
    total = n * d * 4 + n * 8
    if index.info.kind == "hnsw":
        hnsw = faiss.downcast_index(index.index.index).hnsw
        total += hnsw.neighbors.size() * 4 + hnsw.levels.size() * 4 + hnsw.offsets.size() * 8
    return int(total)


def single_query_latency(index: VectorIndex, queries: np.ndarray, budget_s: float) -> dict:
    """Per-query top-10 through VectorIndex.search (normalisation and checks included)."""
    index.search(queries[0], K)  # warm-up
    minimum = 20 if index.ntotal < 1_000_000 else 10
    times = []
    start = time.perf_counter()
    for q in queries:
        t = time.perf_counter()
        index.search(q, K)
        times.append(time.perf_counter() - t)
        if len(times) >= minimum and time.perf_counter() - start > budget_s:
            break
    ms = np.array(times) * 1000
    return {
        "queries": len(times),
        "p50_ms": round(float(np.percentile(ms, 50)), 4),
        "p99_ms": round(float(np.percentile(ms, 99)), 4),
        "mean_ms": round(float(ms.mean()), 4),
    }


def one_thread(measure, *args):  # noqa: ANN001, ANN201
    """Run a measurement with FAISS limited to one OpenMP thread (no spin-waiting on a busy CPU)."""
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        return measure(*args)
    finally:
        faiss.omp_set_num_threads(threads)


def batched_throughput(index: VectorIndex, queries: np.ndarray, budget_s: float) -> dict:
    """Queries per second for searches of 256 normalised queries at once (the FAISS index inside VectorIndex)."""
    batch = normalize_rows(queries[:BATCH])
    if index.ntotal < 100_000:
        index.index.search(batch, K)  # warm-up (a large index is warm from the single queries)
    rounds, start = 0, time.perf_counter()
    while True:
        index.index.search(batch, K)
        rounds += 1
        elapsed = time.perf_counter() - start
        if elapsed > budget_s or rounds >= 20:
            break
    return {
        "batch": BATCH,
        "queries_per_s": round(rounds * BATCH / elapsed, 1),
        "ms_per_batch": round(elapsed / rounds * 1000, 3),
    }


def recall_at_k(index: VectorIndex, queries: np.ndarray, truth: np.ndarray) -> float:
    hits = 0
    for q, t in zip(queries, truth, strict=True):
        ids, _ = index.search(q, K)
        hits += len(set(ids.tolist()) & set(t.tolist()))
    return hits / (len(queries) * K)


def run(sizes: list[int], dims: list[int], hnsw_budget_s: float, query_budget_s: float) -> dict:
    results: list[dict] = []
    hnsw_rate: dict = {}  # (dim, (M, efConstruction)) -> vectors/s of the last HNSW build
    for d in dims:
        scales = scales_for(d)
        queries = sample(1000, d, seed=999_999 + d, scales=scales)
        for n in sizes:
            entry: dict = {"n": n, "dim": d}
            flat, build_s = build_index("flat", n, d, scales)
            entry["flat"] = {
                "build_s": round(build_s, 3),
                "index_bytes": index_bytes(flat),
                "single": single_query_latency(flat, queries[:500], query_budget_s),
                "single_1_thread": one_thread(single_query_latency, flat, queries[:500], query_budget_s),
                "batched": batched_throughput(flat, queries, query_budget_s),
            }
            slow = entry["flat"]["single"]["p99_ms"] > 5.0
            wants_hnsw = n >= 1_000_000 or (n == 100_000 and d == 768 and slow)
            if wants_hnsw:
                entry["hnsw"] = hnsw_entry(
                    flat, n, d, scales, queries, hnsw_rate, hnsw_budget_s, query_budget_s
                )
            results.append(entry)
            print(json.dumps(entry), file=sys.stderr, flush=True)
            del flat
            gc.collect()
    return {"results": results}


def probe_rate(d: int, scales: np.ndarray, params: tuple[int, int]) -> float:
    """Vectors/s of an HNSW build of PROBE vectors, padded by 1.3 (insertion slows down as the graph grows)."""
    _, seconds = build_index("hnsw", PROBE, d, scales, m=params[0], ef_construction=params[1])
    return PROBE / seconds / 1.3


def hnsw_entry(
    flat: VectorIndex,
    n: int,
    d: int,
    scales: np.ndarray,
    queries: np.ndarray,
    hnsw_rate: dict,
    budget_s: float,
    query_budget_s: float,
) -> dict:
    notes = []
    params = (HNSW_M, EF_CONSTRUCTION)
    rate = hnsw_rate.get((d, params)) or probe_rate(d, scales, params)
    if n / rate > budget_s:
        notes.append(
            f"M={HNSW_M}, efConstruction={EF_CONSTRUCTION}: estimated build {n / rate:.0f} s > budget"
        )
        params = FAST_PARAMS
        rate = hnsw_rate.get((d, params)) or probe_rate(d, scales, params)
        if n / rate > budget_s:
            return {
                "skipped": f"estimated build {n / rate:.0f} s even with M={params[0]}, efConstruction={params[1]} "
                f"({rate:.0f} vectors/s measured on {PROBE:,}) exceeds the {budget_s:.0f} s budget",
                "notes": notes,
            }
    sample = queries[:200]
    _, truth = flat.index.search(normalize_rows(sample), K)
    hnsw, build_s = build_index("hnsw", n, d, scales, m=params[0], ef_construction=params[1])
    hnsw_rate[(d, params)] = n / build_s
    tried = []
    chosen = None
    for ef in EF_SEARCH:
        hnsw.ef_search = ef
        recall = recall_at_k(hnsw, sample, truth)
        tried.append({"ef_search": ef, "recall_at_10": round(recall, 4)})
        if recall >= RECALL_TARGET:
            chosen = ef
            break
    chosen = chosen or EF_SEARCH[-1]
    hnsw.ef_search = chosen
    out = {
        "m": params[0],
        "ef_construction": params[1],
        "notes": notes,
        "build_s": round(build_s, 2),
        "index_bytes": index_bytes(hnsw),
        "ef_search": chosen,
        "recall_at_10": tried[-1]["recall_at_10"],
        "recall_target_met": tried[-1]["recall_at_10"] >= RECALL_TARGET,
        "ef_search_tried": tried,
        "single": single_query_latency(hnsw, queries[200:700], query_budget_s),
        "single_1_thread": one_thread(single_query_latency, hnsw, queries[200:700], query_budget_s),
        "batched": batched_throughput(hnsw, queries, query_budget_s),
    }
    del hnsw
    gc.collect()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1k and 10k only (a smoke test)")
    parser.add_argument(
        "--hnsw-budget", type=float, default=240.0, help="seconds an HNSW build may take (estimated)"
    )
    parser.add_argument(
        "--query-budget", type=float, default=3.0, help="seconds per latency/throughput measurement"
    )
    parser.add_argument("--sizes", help="comma-separated library sizes (default 1k,10k,100k,1M)")
    parser.add_argument("--dims", default="384,768", help="comma-separated dimensions")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "rank_cpu.json"))
    args = parser.parse_args()
    sizes = [1_000, 10_000] if args.quick else [1_000, 10_000, 100_000, 1_000_000]
    if args.sizes:
        sizes = [int(float(x)) for x in args.sizes.split(",")]
    dims = [int(x) for x in args.dims.split(",")]
    started = time.perf_counter()
    report = {
        "benchmark": "bench/rank.py",
        "k": K,
        "data": "N(0, diag(1/i)) in d dims (decaying spectrum, participation ratio ~30), L2-normalised; "
        "queries are fresh draws (not library members)",
        "machine": {
            "cpus": os.cpu_count(),
            "faiss_threads": faiss.omp_get_max_threads(),
            "faiss": faiss.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
            "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
        },
        **run(sizes, dims, args.hnsw_budget, args.query_budget),
    }
    report["total_s"] = round(time.perf_counter() - started, 1)
    report["machine"]["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    text = json.dumps(report, indent=2)
    print(text)
    if not args.quick:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
