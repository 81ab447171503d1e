"""How good a source ranking is, measured against real transfer results.

Metrics follow Vu et al. 2020 (NDCG over relative transfer gain, and rho: the rank of the best
source) and Poth et al. 2021 (regret@k: how much target score is lost by trying only the top k).
Conventions shared by all metrics: only sources measured for the target count (other predicted
names are dropped), and a measured source missing from a prediction counts as ranked last.

Beside the ranking methods, `evaluate` scores three baselines: random, DataSize (largest source
first) and the source prior (each source's mean relative gain over the *other* targets of the table,
leave-one-target-out). `informativeness` applies the fixed rule that decides which targets can
separate sources from seed noise (see `INFORMATIVE_RULE`); headline metrics keep those targets only
when the table has seeds. A target whose no-transfer baseline is zero or negative has no relative
gain: `load_transfer_matrix` and `evaluate` skip it with the reason in `skipped_targets`.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from statistics import fmean
from typing import Any

import numpy as np

REQUIRED_COLUMNS = ("source", "target", "score", "baseline_score")
BASELINE_COLUMNS = ("baseline_score", "baseline")  # the no-transfer score's column: either name is read
BASELINES = ("random", "datasize", "source_prior")
HEADLINES = ("auto", "informative", "all")
INFORMATIVE_RULE = (
    "informative = the best source's mean gain in points (mean over its runs of score - baseline_score, "
    "paired on the seed) is greater than 2 x the target's pooled seed sd (the within-group standard "
    "deviation over seeds, pooled over the no-transfer baseline and every source with >= 2 seeds: "
    "sqrt(sum of squared deviations from each group's mean / sum of (n_group - 1))); undetermined "
    "(null) when no group has 2 seeds"
)


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


@dataclass(frozen=True)
class Run:
    """One measured transfer: a source, then the target with one seed, beside that seed's baseline."""

    source: str
    target: str
    seed: int | None
    score: float
    baseline_score: float
    metric: str | None = None


@dataclass
class TransferTable:
    transfers: dict[str, dict[str, Transfer]]  # target -> source -> Transfer
    # filled by `load_transfer_matrix`: every run, the targets left out (target -> why), the majority-class
    # score of each target (from the sidecar) and the table's path
    runs: list[Run] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    majority: dict[str, float] = field(default_factory=dict)

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


def _baseline_column(header: Sequence[str], path: str | Path) -> str:
    """The baseline's column name (`baseline_score`, else `baseline`); a one-line error naming both."""
    for name in BASELINE_COLUMNS:
        if name in header:
            return name
    missing = [c for c in REQUIRED_COLUMNS if c not in header and c != "baseline_score"]
    missing.append("baseline_score (or baseline)")
    raise ValueError(f"line 1: missing column(s) {', '.join(missing)} in {path}")


def _read_rows(path: str | Path, targets: Collection[str] | None, strict: bool) -> tuple[list[Run], set[str]]:
    """Every run of a transfer CSV (targets outside `targets` not parsed further) and every target seen.

    strict: a zero baseline is an error at its line (the original `load_transfer_table` contract);
    otherwise it is kept and the target is skipped later.
    """
    runs: list[Run] = []
    seen_targets: set[str] = set()
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        header = [c.strip() for c in reader.fieldnames or []]
        missing = [c for c in REQUIRED_COLUMNS if c not in header and c != "baseline_score"]
        base_col = _baseline_column(header, path)
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
            baseline = _float(row.get(base_col), base_col, line)
            if strict and baseline == 0:
                raise ValueError(
                    f"line {line}: {base_col} must be non-zero (relative gain divides by it)"
                )
            seed_text = (row.get("seed") or "").strip()
            seed = int(_float(seed_text, "seed", line)) if seed_text else None
            metric = (row.get("metric") or "").strip() or None
            runs.append(Run(source, target, seed, score, baseline, metric))
    unknown = sorted(set(targets or ()) - seen_targets)
    if unknown:
        raise ValueError(f"{path}: no rows for target(s) {', '.join(unknown)}")
    if not runs:
        raise ValueError(f"{path}: no transfer rows")
    return runs, seen_targets


def _averaged(runs: Sequence[Run]) -> dict[str, dict[str, Transfer]]:
    sums: dict[tuple[str, str], list[float]] = {}
    for r in runs:
        acc = sums.setdefault((r.target, r.source), [0.0, 0.0, 0.0])
        acc[0] += r.score
        acc[1] += r.baseline_score
        acc[2] += 1
    table: dict[str, dict[str, Transfer]] = {}
    for (target, source), (score, baseline, n) in sums.items():
        table.setdefault(target, {})[source] = Transfer(score / n, baseline / n, int(n))
    return table


def load_transfer_table(path: str | Path, targets: Collection[str] | None = None) -> TransferTable:
    """Read a CSV with columns source,target,score,baseline_score (others ignored); average repeated pairs.

    The baseline column may be called `baseline` instead. `targets`: keep only these (rows of other
    targets are not read further): a target the regime did not learn (every score 0, relative gain
    undefined) can be left out of a shared table. A zero baseline is an error here; the lenient
    reader for whole matrices is `load_transfer_matrix`.
    """
    runs, _ = _read_rows(path, targets, strict=True)
    return TransferTable(_averaged(runs), runs=runs)


def undefined_baselines(runs: Sequence[Run], chance: Mapping[str, float] | None = None) -> dict[str, str]:
    """Targets whose relative gain is undefined -> why.

    * a run's baseline is zero or negative;
    * given the targets' chance scores (`chance`: the majority-class score of a matrix's sidecar, 0 for
      MCC and correlations), the target was *not learnt*: its mean no-transfer baseline is within twice
      its pooled seed sd of chance. A relative gain then divides by noise (CoLA at 160 steps: MCC
      1.4 +- 0.6, so +8.6 points reads +600% and outweighs every other target in a mean over targets).
    """
    bad: dict[str, list[float]] = {}
    for r in runs:
        if r.baseline_score <= 0:
            bad.setdefault(r.target, []).append(r.baseline_score)
    out = {
        t: f"baseline_score <= 0 in {len(v)} run(s) (lowest {min(v):g}): relative gain is undefined"
        for t, v in sorted(bad.items())
    }
    if chance:
        info = informativeness([r for r in runs if r.target not in out], chance)
        for t, v in info.items():
            floor, sd = chance.get(t), v["seed_sd"]
            if floor is not None and sd is not None and v["baseline_mean"] - floor <= 2 * sd:
                out[t] = (f"not learnt: its no-transfer baseline {v['baseline_mean']:.2f} is within 2 x its seed sd "
                          f"({sd:.2f}) of chance ({floor:g}), so a relative gain divides by noise")
    return dict(sorted(out.items()))


def majority_scores(sidecar: Mapping[str, Any] | None) -> dict[str, float]:
    """`targets.<name>.majority_score` of a transfer-matrix sidecar (missing or malformed entries left out)."""
    targets = (sidecar or {}).get("targets")
    if not isinstance(targets, Mapping):
        return {}
    out = {}
    for name, info in targets.items():
        value = info.get("majority_score") if isinstance(info, Mapping) else None
        if isinstance(value, int | float) and math.isfinite(value):
            out[str(name)] = float(value)
    return out


def load_transfer_matrix(
    path: str | Path,
    targets: Collection[str] | None = None,
    sidecar: str | Path | None = None,
) -> TransferTable:
    """Like `load_transfer_table`, but a target whose relative gain is undefined (a zero or negative
    baseline, or, with the sidecar's chance scores, a target not learnt: `undefined_baselines`) is
    skipped, not fatal.

    Keeps every run (for seeds and informativeness); `skipped` says which targets were left out and
    why. The sidecar (default: the table's path with `.json`, when it exists) gives each target's
    majority-class score. Errors in the file itself (a missing column, a non-number) still raise.
    """
    runs, _ = _read_rows(path, targets, strict=False)
    sidecar_path = Path(sidecar) if sidecar is not None else Path(path).with_suffix(".json")
    majority: dict[str, float] = {}
    if sidecar_path.is_file():
        try:
            majority = majority_scores(json.loads(sidecar_path.read_text(encoding="utf-8")))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{sidecar_path}: not valid JSON ({exc})") from None
    elif sidecar is not None:
        raise ValueError(f"{sidecar_path}: no such sidecar file")
    skipped = undefined_baselines(runs, majority)
    kept = [r for r in runs if r.target not in skipped]
    if not kept:
        reasons = "; ".join(f"{t}: {why}" for t, why in skipped.items())
        raise ValueError(f"{path}: every target was skipped ({reasons})")
    return TransferTable(_averaged(kept), runs=kept, skipped=skipped, majority=majority)


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


# -- informativeness ----------------------------------------------------------------------------------

# Student's t 0.975 quantile for 1..30 degrees of freedom (two-sided 95%); beyond 30, the Cornish-Fisher
# expansion below is within 2e-4 of the exact value.
_T975 = (12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281, 2.2010, 2.1788,
         2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860, 2.0796, 2.0739, 2.0687, 2.0639,
         2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423)


def t975(df: int) -> float:
    """The 0.975 quantile of Student's t with `df` degrees of freedom (the half-width factor of a 95% CI)."""
    if df < 1:
        raise ValueError("a t interval needs at least 1 degree of freedom")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959964
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def _sd(values: Sequence[float]) -> float | None:
    """Sample standard deviation (n - 1); None for fewer than two values."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else None


def _target_informativeness(runs: Sequence[Run], majority: float | None) -> dict[str, Any]:
    baselines: dict[int, list[float]] = {}
    by_source: dict[str, list[Run]] = {}
    for r in runs:
        by_source.setdefault(r.source, []).append(r)
        if r.seed is not None:
            baselines.setdefault(r.seed, []).append(r.baseline_score)
    per_seed = [fmean(v) for _, v in sorted(baselines.items())]  # one baseline per seed
    groups = [per_seed] + [[r.score for r in rs] for rs in by_source.values()]
    squares = sum(float(np.sum((np.asarray(g) - np.mean(g)) ** 2)) for g in groups if len(g) > 1)
    df = sum(len(g) - 1 for g in groups if len(g) > 1)
    pooled = math.sqrt(squares / df) if df else None
    gains: dict[str, list[float]] = {s: [r.score - r.baseline_score for r in rs] for s, rs in by_source.items()}
    means = {s: fmean(d) for s, d in gains.items()}
    best = min(means, key=lambda s: (-means[s], s))
    diffs = gains[best]
    ci = None
    if len(diffs) > 1:
        half = t975(len(diffs) - 1) * float(np.std(diffs, ddof=1)) / math.sqrt(len(diffs))
        ci = [means[best] - half, means[best] + half]
    best_runs = by_source[best]
    best_base = fmean(r.baseline_score for r in best_runs)
    transfer_sds = [sd for rs in by_source.values() if (sd := _sd([r.score for r in rs])) is not None]
    baseline_mean = fmean(per_seed) if per_seed else fmean(r.baseline_score for r in runs)
    metrics = sorted({r.metric for r in runs if r.metric})
    return {
        "metric": metrics[0] if len(metrics) == 1 else (", ".join(metrics) or None),
        "seeds": len(per_seed),
        "sources": len(by_source),
        "runs": len(runs),
        "baseline_mean": baseline_mean,
        "baseline_sd": _sd(per_seed),
        "majority_score": majority,
        "transfer_sd_mean": fmean(transfer_sds) if transfer_sds else None,
        "seed_sd": pooled,
        "threshold_points": 2 * pooled if pooled is not None else None,
        "best_source": best,
        "best_gain_points": means[best],
        "best_gain_ci95": ci,
        "best_relative_gain": (fmean(r.score for r in best_runs) - best_base) / best_base * 100.0
        if best_base
        else None,
        "best_runs": len(diffs),
        "informative": None if pooled is None else bool(means[best] > 2 * pooled),
        "first_two_seeds": _first_two_seeds(runs, majority),
    }


def _first_two_seeds(runs: Sequence[Run], majority: float | None) -> dict[str, Any] | None:
    """The verdict on the target's two lowest seeds alone, kept beside the one over every seed when a
    later seed was added (so adding seeds can be seen to change a verdict, either way); None otherwise."""
    seeds = sorted({r.seed for r in runs if r.seed is not None})
    if len(seeds) <= 2:
        return None
    first = _target_informativeness([r for r in runs if r.seed in seeds[:2]], majority)
    return {"seeds": seeds[:2]} | {k: first[k] for k in ("seed_sd", "threshold_points", "best_source",
                                                          "best_gain_points", "informative")}


def informativeness(
    runs: Sequence[Run], majority: Mapping[str, float] | None = None
) -> dict[str, dict[str, Any]]:
    """Per target: can its measured gains be told apart from seed noise? By a rule fixed in code.

    For each target, from its runs (one per source x seed, each with that seed's no-transfer baseline):

    * `baseline_mean`, `baseline_sd`: mean and sample sd (n - 1) over seeds of the baseline score;
    * `majority_score`: the majority-class score from the sidecar (None when not given);
    * `transfer_sd_mean`: the mean over sources (with >= 2 runs) of the sample sd of their scores;
    * `seed_sd` (pooled): sqrt(SS / df) with SS the sum of squared deviations of each group's values
      from the group mean and df = sum of (n_group - 1), over the groups {baseline per seed} and
      {scores of source s} for every source, groups with fewer than 2 values left out; None if df = 0;
    * `best_source`: highest mean gain in points, mean over its runs of d = score - baseline_score
      (the run's own seed's baseline: paired); ties by name;
    * `best_gain_ci95`: mean(d) +- t(0.975, n - 1) * sd(d) / sqrt(n), a t-interval over the paired
      per-seed differences (None with one run);
    * `informative`: best gain (points) > 2 x seed_sd, i.e. some source's mean gain exceeds twice the
      pooled seed sd (a gain, not a loss: a source that only hurts makes no target informative);
      None (undetermined) when seed_sd is None;
    * `first_two_seeds`: when the target has more than two seeds, the same verdict (`informative`,
      `best_source`, `best_gain_points`, `seed_sd`, `threshold_points`) on its two lowest seeds alone;
      None otherwise.
    """
    by_target: dict[str, list[Run]] = {}
    for r in runs:
        by_target.setdefault(r.target, []).append(r)
    majority = majority or {}
    return {t: _target_informativeness(rs, majority.get(t)) for t, rs in sorted(by_target.items())}


# -- the source prior -----------------------------------------------------------------------------------

def source_mean_gains(gains: Mapping[str, Mapping[str, float]], sources: Sequence[str],
                      exclude: Collection[str] = ()) -> dict[str, tuple[float | None, int]]:
    """Each source's mean relative gain over the targets of `gains` (target -> source -> gain) other than
    `exclude`, and on how many targets it was measured; (None, 0) when on none. The source prior's one
    computation: `source_prior` and the learned ranker's prior feature (`library.ranker`) both use it."""
    out: dict[str, tuple[float | None, int]] = {}
    for s in sources:
        others = [g[s] for u, g in gains.items() if u not in exclude and s in g]
        out[s] = (fmean(others) if others else None, len(others))
    return out


def source_prior(table: TransferTable, targets: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    """Leave-one-target-out: for each target, its sources ordered by their mean relative gain over the
    *other* targets (of `targets`, default all) on which they were measured. Sources measured on no
    other target come last, by name. Per target: `ranking`, `mean_gain` and `n_targets` per source."""
    targets = list(targets if targets is not None else table.targets())
    gains = {t: table.gains(t) for t in targets}
    out: dict[str, dict[str, Any]] = {}
    for t in targets:
        means = source_mean_gains(gains, table.sources(t), exclude=(t,))
        prior = {s: m for s, (m, _) in means.items()}
        counts = {s: n for s, (_, n) in means.items()}
        ranking = sorted(prior, key=lambda s: (prior[s] is None, -(prior[s] or 0.0), s))
        out[t] = {"ranking": ranking, "mean_gain": prior, "n_targets": counts}
    return out


def evaluate(
    table: TransferTable,
    rankings: Mapping[str, Mapping[str, Sequence[str]]],
    k_ndcg: int = 5,
    k_regret: int = 3,
    seed: int = 0,
    source_sizes: Mapping[str, int] | None = None,
    n_random: int = 100,
    headline: str = "auto",
) -> dict[str, Any]:
    """Mean NDCG@k, rho and regret@k per method (with per-target values), over the table's targets.

    rankings: method -> target -> predicted source names, best first. Baselines: "random" (the mean
    over `n_random` seeded permutations, an estimate of the expected value), "source_prior" (each
    source's mean relative gain over the other targets, leave-one-target-out: `source_prior`) and,
    given `source_sizes`, "datasize" (largest training set first; unknown sizes last, ties by name).

    A target whose baseline is zero or negative is skipped (relative gain undefined): listed with the
    reason under "skipped_targets", with the table's own `skipped`. "informativeness" applies
    `INFORMATIVE_RULE` to the table's runs. `headline`: "informative" scores `methods` on the
    informative targets only, "all" on every target, "auto" (default) is "informative" when the
    table has seeds (some target has a pooled seed sd); "methods_all_targets" is always over every
    target, and "headline" says which targets `methods` covers (and why, if it fell back to all).
    """
    if headline not in HEADLINES:
        raise ValueError(f"headline must be one of {', '.join(HEADLINES)}, got {headline!r}")
    clash = sorted(set(rankings) & set(BASELINES))
    if clash:
        raise ValueError(f"method name(s) {clash} are reserved for baselines")
    skipped = dict(table.skipped)
    for t in table.targets():
        low = [tr.baseline_score for tr in table.transfers[t].values() if tr.baseline_score <= 0]
        if low and t not in skipped:
            skipped[t] = f"baseline_score <= 0 for {len(low)} source(s) (lowest {min(low):g}): relative gain is undefined"
    targets = [t for t in table.targets() if t not in skipped]
    if not targets:
        raise ValueError("no target left to evaluate: " + "; ".join(f"{t}: {w}" for t, w in skipped.items()))
    per_method: dict[str, dict[str, Metrics]] = {}
    for method, by_target in rankings.items():
        missing = [t for t in targets if t not in by_target]
        if missing:
            raise ValueError(f"method {method!r} has no ranking for target(s) {', '.join(missing)}")
        per_method[method] = {t: _metrics(by_target[t], table, t, k_ndcg, k_regret) for t in targets}

    rng = np.random.default_rng(seed)
    random_per_target = {}
    for t in targets:
        sources = table.sources(t)
        runs = [
            _metrics([sources[i] for i in rng.permutation(len(sources))], table, t, k_ndcg, k_regret)
            for _ in range(n_random)
        ]
        random_per_target[t] = {m: fmean(r[m] for r in runs) for m in ("ndcg", "rho", "regret")}
    per_method["random"] = random_per_target

    if source_sizes is not None:
        per_method["datasize"] = {
            t: _metrics(datasize_order(table.sources(t), source_sizes), table, t, k_ndcg, k_regret) for t in targets
        }
    prior = source_prior(table, targets)
    per_method["source_prior"] = {t: _metrics(prior[t]["ranking"], table, t, k_ndcg, k_regret) for t in targets}

    runs_kept = [r for r in table.runs if r.target in targets]
    info = informativeness(runs_kept, table.majority)
    has_seeds = any(v["seed_sd"] is not None for v in info.values())
    informative = [t for t in targets if (info.get(t) or {}).get("informative")]
    scope, note = "all", None
    if headline == "informative" or (headline == "auto" and has_seeds):
        if not has_seeds:
            note = "the table has no seeds: informativeness is undetermined, so every target counts"
        elif not informative:
            note = "no target is informative by the rule, so every target counts"
        else:
            scope = "informative"
    chosen = informative if scope == "informative" else targets

    def summary(over: Sequence[str]) -> dict[str, dict[str, Any]]:
        return {m: _summarise({t: v[t] for t in over}) for m, v in per_method.items()}

    return {
        "k_ndcg": k_ndcg,
        "k_regret": k_regret,
        "targets": targets,
        "methods": summary(chosen),
        "methods_all_targets": summary(targets),
        "headline": {"scope": scope, "targets": list(chosen), "note": note},
        "skipped_targets": skipped,
        "informativeness": info,
        "informative_rule": INFORMATIVE_RULE,
        "source_prior": prior,
    }
