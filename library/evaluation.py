"""How good a source ranking is, measured against real transfer results.

Metrics follow Vu et al. 2020 (NDCG over relative transfer gain, and rho: the rank of the best
source) and Poth et al. 2021 (regret@k: how much target score is lost by trying only the top k).
Conventions shared by all metrics: only sources measured for the target count (other predicted
names are dropped), and a measured source missing from a prediction counts as ranked last.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import fmean
from typing import Any

import numpy as np

REQUIRED_COLUMNS = ("source", "target", "score", "baseline_score")
BASELINES = ("random", "datasize")


@dataclass(frozen=True)
class Transfer:
    """One (source, target) pair, averaged over its runs (seeds)."""

    score: float
    baseline_score: float
    runs: int

    @property
    def gain(self) -> float:
        """Relative transfer gain in percent: (score - baseline) / baseline * 100."""
        if self.baseline_score == 0:
            raise ValueError("baseline_score averages to 0: relative gain undefined")
        return (self.score - self.baseline_score) / self.baseline_score * 100.0


@dataclass
class TransferTable:
    transfers: dict[str, dict[str, Transfer]]  # target -> source -> Transfer

    def targets(self) -> list[str]:
        return sorted(self.transfers)

    def sources(self, target: str) -> list[str]:
        return sorted(self.transfers[target])

    def gains(self, target: str) -> dict[str, float]:
        return {s: t.gain for s, t in self.transfers[target].items()}

    def scores(self, target: str) -> dict[str, float]:
        return {s: t.score for s, t in self.transfers[target].items()}


def _float(value: str | None, column: str, line: int) -> float:
    if value is None or not value.strip():
        raise ValueError(f"line {line}: {column} is missing")
    try:
        x = float(value)
    except ValueError:
        raise ValueError(f"line {line}: {column}={value!r} is not a number") from None
    if not math.isfinite(x):
        raise ValueError(f"line {line}: {column}={value!r} is not a finite number")
    return x


def load_transfer_table(path: str | Path, targets: Collection[str] | None = None) -> TransferTable:
    """Read a CSV with columns source,target,score,baseline_score (others ignored); average repeated pairs.

    `targets`: keep only these (rows of other targets are not read further): a target the regime
    did not learn (every score 0, relative gain undefined) can be left out of a shared table.
    """
    sums: dict[tuple[str, str], list[float]] = {}
    seen_targets: set[str] = set()
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        header = [c.strip() for c in reader.fieldnames or []]
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing:
            raise ValueError(f"line 1: missing column(s) {', '.join(missing)} in {path}")
        reader.fieldnames = header
        for row in reader:
            line = reader.line_num
            source, target = (row.get("source") or "").strip(), (row.get("target") or "").strip()
            if not source or not target:
                raise ValueError(f"line {line}: source and target must not be empty")
            seen_targets.add(target)
            if targets is not None and target not in targets:
                continue
            score = _float(row.get("score"), "score", line)
            baseline = _float(row.get("baseline_score"), "baseline_score", line)
            if baseline == 0:
                raise ValueError(
                    f"line {line}: baseline_score must be non-zero (relative gain divides by it)"
                )
            acc = sums.setdefault((target, source), [0.0, 0.0, 0.0])
            acc[0] += score
            acc[1] += baseline
            acc[2] += 1
    unknown = sorted(set(targets or ()) - seen_targets)
    if unknown:
        raise ValueError(f"{path}: no rows for target(s) {', '.join(unknown)}")
    if not sums:
        raise ValueError(f"{path}: no transfer rows")
    table: dict[str, dict[str, Transfer]] = {}
    for (target, source), (score, baseline, n) in sums.items():
        table.setdefault(target, {})[source] = Transfer(score / n, baseline / n, int(n))
    return TransferTable(table)


def _measured(predicted: Sequence[str], known: Mapping[str, float]) -> list[str]:
    """Predicted names that were measured, first occurrence only, in predicted order."""
    seen: set[str] = set()
    out = []
    for name in predicted:
        if name in known and name not in seen:
            seen.add(name)
            out.append(name)
    return out


def ndcg_at_k(predicted: Sequence[str], gains: Mapping[str, float], k: int = 5) -> float:
    """NDCG@k with relevance = gain shifted so the target's worst source has relevance 0.

    Vu et al. use the transfer gain as relevance; gains can be negative, which makes the usual
    exponential gain (2^rel - 1) and even a linear DCG ill-behaved, so relevance is
    rel = gain - min(gain) >= 0 and DCG = sum_{i=1..k} rel_i / log2(i + 1) (linear gain).
    IDCG uses the ideal (descending relevance) order; if IDCG == 0 (all sources equal) return 1.0.
    """
    if not gains:
        raise ValueError("no measured sources for this target")
    if k < 1:
        raise ValueError("k must be at least 1")
    floor = min(gains.values())
    rel = {s: g - floor for s, g in gains.items()}
    dcg = sum(rel[s] / math.log2(i + 1) for i, s in enumerate(_measured(predicted, gains)[:k], start=1))
    ideal = sorted(rel.values(), reverse=True)[:k]
    idcg = sum(r / math.log2(i + 1) for i, r in enumerate(ideal, start=1))
    return 1.0 if idcg == 0 else dcg / idcg


def rho(predicted: Sequence[str], gains: Mapping[str, float]) -> int:
    """Vu et al.'s rho: the 1-based rank of the truly best source in the prediction (lower is better).

    Ties for best: the best-placed of them counts. If no best source was predicted it counts as last
    (rank = number of measured sources).
    """
    if not gains:
        raise ValueError("no measured sources for this target")
    top = max(gains.values())
    ranked = _measured(predicted, gains)
    ranks = [i for i, s in enumerate(ranked, start=1) if gains[s] == top]
    return ranks[0] if ranks else len(gains)


def regret_at_k(predicted: Sequence[str], scores: Mapping[str, float], k: int = 3) -> float:
    """Poth et al. 2021: (best achievable score - best score among the top k) / best achievable, in percent.

    Divides by |best| so a negative best score keeps regret >= 0. An empty top k (no predicted source
    was measured) gets the worst measured score.
    """
    if not scores:
        raise ValueError("no measured sources for this target")
    if k < 1:
        raise ValueError("k must be at least 1")
    best = max(scores.values())
    if best == 0:
        raise ValueError("best achievable score is 0: relative regret undefined")
    chosen = _measured(predicted, scores)[:k]
    got = max(scores[s] for s in chosen) if chosen else min(scores.values())
    return (best - got) / abs(best) * 100.0


Metrics = dict[str, float]


def datasize_order(sources: Sequence[str], sizes: Mapping[str, int]) -> list[str]:
    """The "bigger is better" heuristic: largest training set first; unknown sizes last; ties by name."""
    return sorted(sources, key=lambda s: (s not in sizes, -sizes.get(s, 0), s))


def _metrics(
    predicted: Sequence[str], table: TransferTable, target: str, k_ndcg: int, k_regret: int
) -> Metrics:
    gains = table.gains(target)
    return {
        "ndcg": ndcg_at_k(predicted, gains, k_ndcg),
        "rho": float(rho(predicted, gains)),
        "regret": regret_at_k(predicted, table.scores(target), k_regret),
    }


def _summarise(per_target: dict[str, Metrics]) -> dict[str, Any]:
    names = ("ndcg", "rho", "regret")
    return {m: fmean(v[m] for v in per_target.values()) for m in names} | {"per_target": per_target}


def evaluate(
    table: TransferTable,
    rankings: Mapping[str, Mapping[str, Sequence[str]]],
    k_ndcg: int = 5,
    k_regret: int = 3,
    seed: int = 0,
    source_sizes: Mapping[str, int] | None = None,
    n_random: int = 100,
) -> dict[str, Any]:
    """Mean NDCG@k, rho and regret@k per method (with per-target values), over every table target.

    rankings: method -> target -> predicted source names, best first. Baselines: "random" (the mean
    over `n_random` seeded permutations, an estimate of the expected value) and, given
    `source_sizes`, "datasize" (largest training set first; unknown sizes last, ties by name).
    """
    clash = sorted(set(rankings) & set(BASELINES))
    if clash:
        raise ValueError(f"method name(s) {clash} are reserved for baselines")
    targets = table.targets()
    methods: dict[str, dict[str, Any]] = {}
    for method, by_target in rankings.items():
        missing = [t for t in targets if t not in by_target]
        if missing:
            raise ValueError(f"method {method!r} has no ranking for target(s) {', '.join(missing)}")
        methods[method] = _summarise({t: _metrics(by_target[t], table, t, k_ndcg, k_regret) for t in targets})

    rng = np.random.default_rng(seed)
    random_per_target = {}
    for t in targets:
        sources = table.sources(t)
        runs = [
            _metrics([sources[i] for i in rng.permutation(len(sources))], table, t, k_ndcg, k_regret)
            for _ in range(n_random)
        ]
        random_per_target[t] = {m: fmean(r[m] for r in runs) for m in ("ndcg", "rho", "regret")}
    methods["random"] = _summarise(random_per_target)

    if source_sizes is not None:
        methods["datasize"] = _summarise(
            {
                t: _metrics(datasize_order(table.sources(t), source_sizes), table, t, k_ndcg, k_regret)
                for t in targets
            }
        )
    return {"k_ndcg": k_ndcg, "k_regret": k_regret, "targets": targets, "methods": methods}
