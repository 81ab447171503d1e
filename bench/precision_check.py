"""Is fp32 training interchangeable with the matrix's bf16, target by target? A paired check, rule fixed first.

The shipped matrix trains in bf16 autocast (fast on CPUs with AMX-BF16 or AVX512-BF16, 14x slower
emulated elsewhere); the service's own transfer jobs train in fp32 on the CPU. Whether that difference
matters is measured here on the no-transfer baselines, which need no source checkpoint:

    # every target of TARGET_ORDER, seeds 13 and 14, the regime's 160 steps, in fp32 (a separate file)
    nice -n 19 .venv/bin/python bench/transfer_matrix.py --phase pilot --pilot-epochs 5 --precision fp32 \\
        --targets <TARGET_ORDER> --out var/precision/fp32.csv --workers 2
    .venv/bin/python bench/precision_check.py --fp32 var/precision/fp32_pilot.csv

Rule, fixed on 6 Dec 2026 before any fp32 baseline was run: for each (target, seed) measured in both,
z = (fp32 score - bf16 score) / the target's pooled seed sd in the shipped matrix (its informativeness
rule's sd). fp32 is **interchangeable** with bf16 when the 95% t-interval of the mean z lies inside
[-0.5, +0.5], i.e. any systematic shift is under half a seed sd (an equivalence margin well inside the
informativeness bar of 2 seed sd). The sd of z says how far one seed's run moves with the precision
alone, beside sqrt(2) (how far two seeds' runs differ). Writes `bench/results/precision_fp32_vs_bf16.json`.

What follows, fixed with the rule: interchangeable -> a CPU without native bf16 may go on with the matrix
in fp32 (each runner session records its precision), rather than refuse; not -> the runner keeps
refusing such a CPU, and the measured shift is what separates the service's fp32 CPU jobs from the
matrix's bf16 runs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path
from statistics import fmean, stdev

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

_ROOT = Path(__file__).resolve().parents[1]
MARGIN = 0.5  # seed sds: the equivalence margin of the rule above


def compare(fp32_rows: list[dict[str, str]], bf16_rows: list[dict[str, str]],
            seed_sd: dict[str, float]) -> dict[str, object]:
    """Pairs fp32 and bf16 baselines on (target, seed) and applies the rule in the module docstring."""
    from library.evaluation import t975

    bf16 = {(r["target"], int(r["seed"])): float(r["score"]) for r in bf16_rows}
    pairs = []
    for r in fp32_rows:
        key = (r["target"], int(r["seed"]))
        sd = seed_sd.get(r["target"])
        if key not in bf16 or not sd:
            continue
        d = float(r["score"]) - bf16[key]
        pairs.append({"target": key[0], "seed": key[1], "fp32": float(r["score"]), "bf16": bf16[key],
                      "diff_points": round(d, 4), "seed_sd": round(sd, 4), "z": round(d / sd, 4)})
    zs = [p["z"] for p in pairs]
    out: dict[str, object] = {"rule": f"interchangeable when the 95% t-interval of mean z lies in [-{MARGIN}, +{MARGIN}]",
                              "pairs": pairs, "n": len(zs)}
    if len(zs) > 1:
        mean, sd = fmean(zs), stdev(zs)
        half = t975(len(zs) - 1) * sd / math.sqrt(len(zs))
        out |= {"mean_z": round(mean, 4), "sd_z": round(sd, 4), "ci95_z": [round(mean - half, 4), round(mean + half, 4)],
                "mean_abs_diff_points": round(fmean(abs(p["diff_points"]) for p in pairs), 4),
                "interchangeable": bool(-MARGIN <= mean - half and mean + half <= MARGIN)}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fp32", required=True, help="the fp32 baselines (transfer_matrix.py --phase pilot output)")
    parser.add_argument("--matrix", default=str(_ROOT / "library" / "default" / "transfer_matrix.csv"))
    parser.add_argument("--out", default=str(_ROOT / "bench" / "results" / "precision_fp32_vs_bf16.json"))
    args = parser.parse_args()

    from bench.transfer_matrix import read_rows
    from library.evaluation import informativeness, load_transfer_table

    matrix = Path(args.matrix)
    seed_sd = {t: v["seed_sd"] for t, v in informativeness(load_transfer_table(matrix).runs).items() if v["seed_sd"]}
    bf16_rows = read_rows(matrix.with_name(matrix.stem + "_baselines.csv"))
    result = compare(read_rows(Path(args.fp32)), bf16_rows, seed_sd)
    shown = str(matrix.relative_to(_ROOT)) if matrix.resolve().is_relative_to(_ROOT) else str(matrix)
    result["about"] = {"fp32": args.fp32, "matrix": shown, "machine": f"{platform.processor() or platform.machine()}, "
                       f"{os.cpu_count()} CPUs", "generated": datetime.now(UTC).isoformat(timespec="minutes")}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "pairs"}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
