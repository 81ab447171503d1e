"""How compact can shipped ESMs be? ESM-LogME scores and rankings with compressed maps against fp16 maps.

The shipped library must stay under 5 MB; fp16 ESMs (384 x 384 + bias) are 0.3 MB each, so 20 of them
do not fit. For each real target (a task folder of the shared data, its library-sized sample, LogME
rows as `esm_logme` ranks them), every other source's map is scored in fp16 (the reference: how the
store keeps maps) and compressed, and the rankings compared:

* `int8_diag`: what bundles ship (`embeddings.esm.quantise_rows`): the diagonal in fp16, the other
  entries symmetric int8 with one fp16 scale per output row, ~149 KB;
* `int8_row`: the same without the diagonal kept apart (for contrast: ESMs are diagonal-dominant, so
  each row's step is set by its diagonal), ~148 KB;
* `int8_tensor`: symmetric int8, one scale for the whole matrix (for contrast), ~148 KB;
* `lowrank_<r>`: the best rank-r approximation (SVD) in fp16, r = 96 is about int8's size.

Per target: Spearman's rho between the fp16 and compressed scores, whether the top source and the
top-3 set are the same, the largest score change, and the gap between the fp16 scores of ranks 3 and 4
(how close a call the top 3 is). The maps must be fp16 ones as fitted (a data directory where
`taskrank library build-esm` ran, or one that imported an fp16 bundle): maps read back from an int8
bundle would compare int8 with itself.

    .venv/bin/python bench/esm_storage.py --data-dir /tmp/esmbuild [--targets rte,sst2] [--out ...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]


def int8_row(weight: np.ndarray) -> np.ndarray:
    scales = (np.abs(weight).max(axis=1) / 127.0).astype(np.float16).astype(np.float32)
    safe = np.where(scales > 0, scales, 1.0)[:, None]
    return np.clip(np.rint(weight / safe), -127, 127).astype(np.int8).astype(np.float32) * safe


def int8_tensor(weight: np.ndarray) -> np.ndarray:
    scale = np.float16(np.abs(weight).max() / 127.0).astype(np.float32)
    return np.clip(np.rint(weight / scale), -127, 127).astype(np.int8).astype(np.float32) * scale


def low_rank(weight: np.ndarray, rank: int) -> np.ndarray:
    u, s, vt = np.linalg.svd(weight.astype(np.float64), full_matrices=False)
    left = (u[:, :rank] * s[:rank]).astype(np.float16).astype(np.float32)
    return left @ vt[:rank].astype(np.float16).astype(np.float32)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic) if len(a) > 2 else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--data-dir", required=True, help="a TASKRANK_DATA_DIR whose store holds fp16 ESMs")
    parser.add_argument("--targets", help="comma-separated task folders (default: every library task with one, "
                                          "question answering excepted)")
    parser.add_argument("--ranks", default="96,48", help="low ranks to try")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache", default="/tmp/esm_storage_rows", help="where the targets' rows are kept")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "esm_storage.json"))
    args = parser.parse_args()

    import torch

    from embeddings.encoders import set_threads
    from embeddings.esm import EmbeddingSpaceMap, dequantise_rows, esm_logme_scores, quantise_rows
    from library.service import LibraryService
    from library.settings import Settings

    set_threads(args.threads)
    settings = Settings(data_dir=Path(args.data_dir), shared_data_dir=Path(args.data))
    service = LibraryService.from_settings(settings)
    stored = service.store.source_maps("esm", service.encoder.weights_hash)
    if len(stored) < 4:
        raise SystemExit(f"{args.data_dir} holds {len(stored)} ESMs; at least 4 are needed to compare rankings")
    variants: dict[str, Any] = {"int8_diag": lambda w: dequantise_rows(quantise_rows(w)), "int8_row": int8_row,
                                "int8_tensor": int8_tensor}
    for r in (int(x) for x in args.ranks.split(",") if x):
        variants[f"lowrank_{r}"] = lambda w, r=r: low_rank(w, r)
    d_out, d_in = stored[0].weight.shape
    sizes = {"fp16": 2 * d_out * d_in + 2 * d_out, "int8_diag": d_out * d_in + 6 * d_out,
             "int8_row": d_out * d_in + 4 * d_out,
             "int8_tensor": d_out * d_in + 2 * d_out + 2}
    sizes.update({k: 2 * int(k.split("_")[1]) * (d_in + d_out) + 2 * d_out for k in variants if k.startswith("lowrank")})

    def esm(weight: np.ndarray, bias: np.ndarray) -> EmbeddingSpaceMap:
        return EmbeddingSpaceMap(weight=weight, bias=bias, r2_heldout=0.0, rows=0, ridge=0.0)

    compressed = {name: {m.task_name: f(m.weight) for m in stored} for name, f in variants.items()}
    weight_error = {name: round(float(np.mean([np.linalg.norm(w[m.task_name] - m.weight) / np.linalg.norm(m.weight)
                                               for m in stored])), 5) for name, w in compressed.items()}
    if args.targets:
        names = [t.strip() for t in args.targets.split(",") if t.strip()]
    else:
        names = [t.name for t in service.store.list_tasks() if t.task_type != "question_answering"]
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    per_target: dict[str, Any] = {}
    for name in names:
        rows = service.target_rows(name)
        if rows is None:
            print(f"skip {name}: no task folder under {args.data}", file=sys.stderr)
            continue
        started = time.perf_counter()
        path = cache / f"{name}-{service.encoder.weights_hash[:12]}.npy"
        if path.is_file():
            features = np.load(path)
        else:
            features = rows.base_features()
            np.save(path, features)
        labels, regression = rows.labels()
        sources = [m for m in stored if m.task_name != name]
        reference = esm_logme_scores(features, labels, [esm(m.weight, m.bias) for m in sources], regression=regression)
        order = np.argsort(-reference, kind="stable")
        top3 = {sources[i].task_name for i in order[:3]}
        entry: dict[str, Any] = {"rows": len(labels), "task_type": rows.dataset.task_type.value,
                                 "fp16_top3": [sources[i].task_name for i in order[:3]],
                                 "fp16_gap_rank3_rank4": round(float(reference[order[2]] - reference[order[3]]), 6)}
        for variant, weights in compressed.items():
            maps = [esm(weights[m.task_name], m.bias.astype(np.float16).astype(np.float32)) for m in sources]
            scores = esm_logme_scores(features, labels, maps, regression=regression)
            other = np.argsort(-scores, kind="stable")
            entry[variant] = {"spearman": round(spearman(reference, scores), 5),
                              "same_top1": bool(order[0] == other[0]),
                              "top3_overlap": len(top3 & {sources[i].task_name for i in other[:3]}),
                              "same_order": bool((order == other).all()),
                              "max_abs_score_change": float(f"{np.abs(scores - reference).max():.3g}")}
        entry["seconds"] = round(time.perf_counter() - started, 1)
        per_target[name] = entry
        print(json.dumps({name: entry}), file=sys.stderr, flush=True)
    summary = {}
    for variant in variants:
        parts = [e[variant] for e in per_target.values()]
        summary[variant] = {
            "bytes_per_map": sizes[variant], "mean_relative_weight_error": weight_error[variant],
            "mean_spearman": round(float(np.mean([p["spearman"] for p in parts])), 5),
            "min_spearman": round(float(np.min([p["spearman"] for p in parts])), 5),
            "same_top1": f"{sum(p['same_top1'] for p in parts)}/{len(parts)}",
            "same_top3_set": f"{sum(p['top3_overlap'] == 3 for p in parts)}/{len(parts)}",
            "same_full_order": f"{sum(p['same_order'] for p in parts)}/{len(parts)}",
            "max_abs_score_change": max(p["max_abs_score_change"] for p in parts),
        }
    result = {
        "benchmark": "bench/esm_storage.py", "model": service.encoder.name, "maps": len(stored),
        "reference": "fp16 maps as stored", "bytes_per_map_fp16": sizes["fp16"], "summary": summary,
        "targets": per_target,
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "python": platform.python_version(), "load_avg": [round(x, 2) for x in os.getloadavg()]},
    }
    service.close()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["summary"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
