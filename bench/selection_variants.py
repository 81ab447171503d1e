"""Similarity variants for source ranking, scored on the measured transfer matrix, held-out targets apart.

Session 2 found, after the fact and on the same three targets it had measured (stsb, trec_qc, mrpc),
that centring the embeddings over the library seemed to help TextEmb and that TaskEmb on log-Fisher
seemed to help TaskEmb. A choice made on a table must be checked on targets it was not made on: this
script ranks the measured sources of every target of the matrix with each variant and reports the
selection metrics (NDCG@5, rho, Regret@3; `library.evaluation`) on the targets the variants were
chosen on and, apart, on the held-out ones.

Variants (every vector L2-normalised first, as the service's index does):
* `cosine`: what the service ranks by (inner product of L2-normalised vectors);
* `centred`: minus the mean of the library's other tasks (the target left out, as a user's target
  is not in the library), then cosine; removes the direction every task shares (the hubs);
* `log_centred` (TaskEmb only): the Fisher vector's log (floor 1e-6 of its mean) before the above,
  so a few large diagonal entries do not decide the similarity.
TaskEmb fuses its components by reciprocal rank fusion and the ensemble fuses TextEmb, SEmb and
TaskEmb the same way (k=60), exactly as `library.ranking`; the `cosine` rows reproduce
`taskrank evaluate` (tests/library/test_real_ranking.py checks it).

Also `<method>+datasize`: the method's ranking fused by RRF with the DataSize ranking (largest
training set first), since DataSize alone beat every embedding on the tuning targets. Defined (and
committed) before the held-out targets' transfers were evaluated.

    .venv/bin/python bench/selection_variants.py [--table bench/results/transfer_matrix_minilm.csv]
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from library.evaluation import evaluate, load_transfer_table  # noqa: E402
from library.methods.base import RRF_K  # noqa: E402

TUNING_TARGETS = ("stsb", "trec_qc", "mrpc")  # where session 2 looked at the variants
ENSEMBLE_OF = ("textemb", "semb", "taskemb")
VARIANTS = {"textemb": ("cosine", "centred"), "semb": ("cosine", "centred"),
            "taskemb": ("cosine", "centred", "log_centred")}


def load_library(folder: Path) -> tuple[dict[str, dict[str, dict[str, np.ndarray]]], dict[str, int]]:
    """task -> method -> component -> raw vector, and task -> num_train, from an exported bundle."""
    manifest = json.loads((folder / "manifest.json").read_text())
    arrays = np.load(folder / "vectors.npz")
    vectors: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    sizes = {}
    for task in manifest["tasks"]:
        sizes[task["name"]] = int(task["num_train"])
        for e in task["embeddings"]:
            vectors.setdefault(task["name"], {}).setdefault(e["method"], {})[e["component"]] = (
                arrays[e["array"]].astype(np.float64))
    return vectors, sizes


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def component_similarities(matrix: np.ndarray, target: int, variant: str) -> np.ndarray:
    """Similarity of row `target` to every row of `matrix` (tasks x dim) under one variant."""
    x = matrix
    if variant == "log_centred":
        floor = 1e-6 * x.mean(axis=1, keepdims=True)
        x = np.log(np.maximum(x, floor))
    x = _unit(x)
    if variant in ("centred", "log_centred"):
        others = np.delete(np.arange(len(x)), target)
        x = _unit(x - x[others].mean(axis=0))
    return x @ x[target]


def ranks_by(similarity: Mapping[str, float]) -> dict[str, int]:
    """1-based ranks, best first; ties by name (as `library.ranking`)."""
    order = sorted(similarity, key=lambda s: (-similarity[s], s))
    return {s: i for i, s in enumerate(order, start=1)}


def rrf(parts: list[dict[str, int]]) -> dict[str, float]:
    """A task missing from a part (no such component) gets nothing from it, as `library.ranking.rrf`."""
    names = set().union(*parts)
    return {s: math.fsum(1.0 / (RRF_K + p[s]) for p in parts if s in p) for s in names}


def method_ranks(vectors: dict[str, dict[str, dict[str, np.ndarray]]], tasks: list[str], target: str,
                 method: str, variant: str) -> dict[str, int]:
    """Ranks of every other library task for `target` under one method and variant."""
    per_component = []
    for component in sorted(vectors[target][method]):
        having = [n for n in tasks if component in vectors[n].get(method, {})]  # token tasks lack cls_output
        sims = component_similarities(np.stack([vectors[n][method][component] for n in having]),
                                      having.index(target), variant)
        per_component.append(ranks_by({n: sims[i] for i, n in enumerate(having) if n != target}))
    return per_component[0] if len(per_component) == 1 else ranks_by(rrf(per_component))


def git_revision() -> str:
    done = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--table", type=Path, default=ROOT / "bench" / "results" / "transfer_matrix_minilm.csv")
    parser.add_argument("--library", type=Path, default=ROOT / "library" / "default")
    parser.add_argument("--targets", help="comma-separated targets to score (default: every target of the table)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "selection_variants_minilm.json")
    args = parser.parse_args(argv)

    table = load_transfer_table(args.table, args.targets.split(",") if args.targets else None)
    vectors, sizes = load_library(args.library)
    tasks = sorted(vectors)
    rankings: dict[str, dict[str, list[str]]] = {}
    for target in table.targets():
        per_method: dict[str, dict[str, dict[str, int]]] = {}
        for method, variants in VARIANTS.items():
            for variant in variants:
                ranks = method_ranks(vectors, tasks, target, method, variant)
                per_method.setdefault(variant, {})[method] = ranks
                rankings.setdefault(f"{method}/{variant}", {})[target] = sorted(ranks, key=ranks.get)
        for variant in ("cosine", "centred"):
            fused = ranks_by(rrf([per_method[variant][m] for m in ENSEMBLE_OF]))
            per_method[variant]["ensemble"] = fused
            rankings.setdefault(f"ensemble/{variant}", {})[target] = sorted(fused, key=fused.get)
        by_size = ranks_by({s: float(sizes[s]) for s in tasks if s != target})
        for method in ("taskemb", "ensemble"):
            fused = ranks_by(rrf([per_method["cosine"][method], by_size]))
            rankings.setdefault(f"{method}+datasize/cosine", {})[target] = sorted(fused, key=fused.get)

    held_out = [t for t in table.targets() if t not in TUNING_TARGETS]
    tuning = [t for t in table.targets() if t in TUNING_TARGETS]

    def scored(targets: list[str]) -> dict[str, Any]:
        if not targets:
            return {}
        sub = type(table)({t: table.transfers[t] for t in targets})
        result = evaluate(sub, {m: {t: r[t] for t in targets} for m, r in rankings.items()}, source_sizes=sizes)
        return {m: {k: round(v, 4) for k, v in r.items() if k != "per_target"}
                | {"ndcg_per_target": {t: round(x["ndcg"], 3) for t, x in r["per_target"].items()}}
                for m, r in result["methods"].items()}

    report = {
        "benchmark": "selection_variants", "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "git_revision": git_revision(), "table": str(args.table),
        "library": str(args.library), "tuning_targets": tuning, "held_out_targets": held_out,
        "all_targets": scored(table.targets()), "tuning": scored(tuning), "held_out": scored(held_out),
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
