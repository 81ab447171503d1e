"""The shipped transfer matrix as a view: sources x targets, clustered, with a user's own transfers merged.

`library/default/transfer_matrix.csv` (one row per source x target x seed, written by
`bench/transfer_matrix.py`) and its sidecar `transfer_matrix.json` ship beside the default library.
`build_view` turns their runs into what `GET /library/transfers`, its page and `taskrank library
transfers` show:

* a cell per (source, target): the mean relative gain in % of the no-transfer baseline, computed as
  `evaluation.Transfer.gain` does ((mean score - mean baseline) / mean baseline * 100 over the cell's
  runs), the seed sd (sample sd of the runs' own relative gains), the number of runs, and the runs;
* rows and columns ordered by average-linkage hierarchical clustering of their gain profiles
  (`cluster_order`), numpy only;
* per target the informativeness report of `library.evaluation.informativeness` (its fixed rule);
  targets whose baseline is zero or negative are left out with the reason (`skipped_targets`).

A user's finished intermediate-transfer jobs (`POST /transfers`, run by `worker.runner.run_transfer`)
are merged by the pure `user_runs` (batches and their job records in, runs out): each source job's
per-seed score is paired with the batch baseline job's score for the same seed. Shipped runs carry
`"origin": "matrix"`, the user's `"origin": "user"`; a user's target gets its own column (named
"<name> (yours)" when a shipped target has that name), so shipped cells stay one regime.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from statistics import fmean
from typing import Any

import numpy as np

from library.evaluation import (
    BASELINE_COLUMNS,
    INFORMATIVE_RULE,
    Run,
    informativeness,
    majority_scores,
    undefined_baselines,
)

DEFAULT_MATRIX = Path(__file__).resolve().parent / "default" / "transfer_matrix.csv"
MATRIX, USER = "matrix", "user"
_EXTRA_NUMBERS = ("source_rows", "target_rows", "dev_rows", "steps", "best_step", "seconds")


# -- reading the shipped files ------------------------------------------------------------------------

def sidecar_path(matrix: Path) -> Path:
    return matrix.with_suffix(".json")


def read_matrix_runs(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Every well-formed row of a transfer-matrix CSV as a run dict (origin "matrix"), and one line per
    row left out. Lenient on purpose: the runner appends to this file while it is read, so a half-written
    last line is a note, not an error. The baseline column may be `baseline_score` or `baseline`."""
    if not path.is_file():
        return [], []
    runs: list[dict[str, Any]] = []
    problems: list[str] = []
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        header = [c.strip() for c in reader.fieldnames or []]
        reader.fieldnames = header
        base_col = next((c for c in BASELINE_COLUMNS if c in header), None)
        missing = [c for c in ("source", "target", "score") if c not in header]
        if missing or base_col is None:
            need = missing + ([] if base_col else ["baseline_score (or baseline)"])
            return [], [f"{path.name}: missing column(s) {', '.join(need)}"]
        for row in reader:
            line = reader.line_num
            source, target = (row.get("source") or "").strip(), (row.get("target") or "").strip()
            try:
                score, baseline = float(row.get("score") or ""), float(row.get(base_col) or "")
                seed_text = (row.get("seed") or "").strip()
                seed = int(float(seed_text)) if seed_text else None
            except ValueError:
                problems.append(f"line {line}: not a number in score, {base_col} or seed; row left out")
                continue
            if not source or not target or not (math.isfinite(score) and math.isfinite(baseline)):
                problems.append(f"line {line}: empty source/target or a non-finite score; row left out")
                continue
            run: dict[str, Any] = {"source": source, "target": target, "seed": seed, "score": score,
                                   "baseline_score": baseline, "metric": (row.get("metric") or "").strip() or None,
                                   "origin": MATRIX}
            for key in _EXTRA_NUMBERS:
                value = (row.get(key) or "").strip()
                try:
                    run[key] = float(value) if value else None
                except ValueError:
                    run[key] = None
            runs.append(run)
    return runs, problems


def read_sidecar(path: Path) -> dict[str, Any]:
    """The sidecar JSON, or {} when it is absent or unreadable (written by rename, so rarely partial)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


# -- a user's transfer jobs ---------------------------------------------------------------------------

@dataclass(frozen=True)
class UserBatch:
    """One transfer batch of the user's, as gathered by the caller: the batch record (a
    `library.jobs.StoredTransferBatch` or anything with its fields), its jobs by id (`Job`-like: `state`,
    `result`) and the target dataset's name."""

    batch: Any
    jobs: Mapping[str, Any]
    target_name: str


def _state(job: Any) -> str:
    state = getattr(job, "state", None)
    return str(getattr(state, "value", state))


def user_runs(batches: Iterable[UserBatch]) -> list[dict[str, Any]]:
    """Runs (origin "user") from the user's finished intermediate-transfer batches: for each succeeded
    source job, one run per seed, its score beside the succeeded baseline job's score for that seed.
    Multi-source batches (one combined job) and unfinished or failed jobs give no runs. Pure."""
    runs: list[dict[str, Any]] = []
    for item in batches:
        batch = item.batch
        if getattr(batch, "method", "intermediate") != "intermediate":
            continue
        ids = batch.job_ids or {}
        base_job = item.jobs.get(ids.get("baseline") or "")
        if base_job is None or _state(base_job) != "succeeded" or not base_job.result:
            continue
        baseline = {int(r["seed"]): float(r["score"]) for r in base_job.result.get("runs") or []}
        names = {s["key"]: s.get("name") or s["key"] for s in batch.sources or []}
        created = getattr(batch, "created_at", None)
        for key, job_id in (ids.get("sources") or {}).items():
            job = item.jobs.get(job_id)
            if job is None or _state(job) != "succeeded" or not job.result:
                continue
            result = job.result
            for r in result.get("runs") or []:
                seed = int(r["seed"])
                if seed not in baseline:
                    continue
                runs.append({"source": names.get(key, key), "target": item.target_name, "seed": seed,
                             "score": float(r["score"]), "baseline_score": baseline[seed],
                             "metric": result.get("main_metric"), "origin": USER, "job_id": job_id,
                             "batch_id": batch.id, "source_rows": result.get("source_rows"),
                             "target_rows": result.get("train_rows"), "dev_rows": result.get("dev_rows"),
                             "steps": r.get("steps"), "best_step": r.get("best_step"), "seconds": r.get("seconds"),
                             "created_at": created.isoformat() if isinstance(created, datetime) else None})
    return runs


def gather_user_batches(store: Any, owner: str | None = None, limit: int = 200) -> list[UserBatch]:
    """The latest transfer batches of `owner` (None: everyone's) with their jobs, from a `JobStore`."""
    found = []
    for batch in store.list_transfer_batches(owner=owner, limit=limit):
        if batch.method != "intermediate":
            continue
        dataset = store.get_dataset(batch.target_dataset_id)
        found.append(UserBatch(batch, store.transfer_batch_jobs(batch),
                               dataset.name if dataset is not None else batch.target_dataset_id))
    return found


# -- clustering ---------------------------------------------------------------------------------------

def _distances(profiles: np.ndarray) -> np.ndarray:
    """Root-mean-square difference over the coordinates both profiles have (NaN = not measured); pairs
    with none in common get the largest distance seen (or 0 when there is none)."""
    n = len(profiles)
    d = np.full((n, n), np.nan)
    for i in range(n):
        d[i, i] = 0.0
        for j in range(i + 1, n):
            both = ~np.isnan(profiles[i]) & ~np.isnan(profiles[j])
            if both.any():
                d[i, j] = d[j, i] = math.sqrt(float(np.mean((profiles[i, both] - profiles[j, both]) ** 2)))
    finite = d[~np.isnan(d)]
    d[np.isnan(d)] = float(finite.max()) if finite.size else 0.0
    return d


def cluster_order(profiles: Sequence[Sequence[float]] | np.ndarray) -> list[int]:
    """Leaf order of average-linkage (UPGMA) agglomerative clustering of the rows of `profiles`.

    Each step merges the two clusters with the smallest mean pairwise distance (`_distances`); ties go
    to the pair that comes first in creation order (the input order, then merges), so the result
    depends only on the input. In each merge the child with the higher mean profile value goes first
    (ties: the child holding the lower input index), so helpful sources and easy targets lead.
    """
    data = np.asarray(profiles, dtype=float)
    n = len(data)
    if n == 0:
        return []
    if data.ndim != 2:
        data = data.reshape(n, -1)
    dist = _distances(data)
    clusters: list[list[int]] = [[i] for i in range(n)]
    active = list(range(n))

    def level(members: list[int]) -> float:
        values = data[members]
        finite = values[~np.isnan(values)]
        return float(finite.mean()) if finite.size else -math.inf

    while len(active) > 1:
        best: tuple[float, int, int] | None = None
        for a_pos, a in enumerate(active):
            for b in active[a_pos + 1:]:
                gap = round(float(dist[np.ix_(clusters[a], clusters[b])].mean()), 9)
                if best is None or gap < best[0]:
                    best = (gap, a, b)
        assert best is not None
        _, a, b = best
        first, second = sorted((clusters[a], clusters[b]), key=lambda m: (-level(m), min(m)))
        clusters.append(first + second)
        active = [c for c in active if c not in (a, b)] + [len(clusters) - 1]
    return clusters[active[0]]


# -- the view -----------------------------------------------------------------------------------------

def _relative(score: float, baseline: float) -> float | None:
    return (score - baseline) / baseline * 100.0 if baseline > 0 else None


def _cell(source: str, target: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    mean_score = fmean(r["score"] for r in runs)
    mean_base = fmean(r["baseline_score"] for r in runs)
    each = [g for r in runs if (g := _relative(r["score"], r["baseline_score"])) is not None]
    ordered = sorted(runs, key=lambda r: (r["origin"] != MATRIX, r["seed"] if r["seed"] is not None else -1))
    return {"source": source, "target": target, "mean_gain": _relative(mean_score, mean_base),
            "seed_sd": float(np.std(each, ddof=1)) if len(each) > 1 else None, "n_runs": len(runs),
            "mean_score": mean_score, "mean_baseline": mean_base,
            "origins": sorted({r["origin"] for r in runs}),
            "runs": [{**r, "gain_points": r["score"] - r["baseline_score"],
                      "relative_gain": _relative(r["score"], r["baseline_score"])} for r in ordered]}


def _as_run(r: dict[str, Any], target: str) -> Run:
    return Run(r["source"], target, r["seed"], r["score"], r["baseline_score"], r.get("metric"))


@dataclass
class _Column:
    name: str
    label: str
    origin: str
    runs: list[dict[str, Any]] = field(default_factory=list)


def build_view(matrix_runs: Sequence[dict[str, Any]], sidecar: Mapping[str, Any] | None = None,
               user: Sequence[dict[str, Any]] = (), *, matrix_path: str | None = None,
               problems: Sequence[str] = ()) -> dict[str, Any]:
    """The matrix as rows (sources) x columns (targets), clustered, plus per-target informativeness.

    `matrix_runs`: run dicts (`read_matrix_runs`); `user`: run dicts of origin "user" (`user_runs`).
    Pure: the same input gives the same view, whatever the order of the runs.
    """
    sidecar = sidecar or {}
    majority = majority_scores(sidecar)
    skipped = undefined_baselines([_as_run(r, r["target"]) for r in matrix_runs], majority)
    columns: dict[str, _Column] = {}
    for r in sorted(matrix_runs, key=lambda r: (r["target"], r["source"], r["seed"] or 0)):
        if r["target"] not in skipped:
            columns.setdefault(r["target"], _Column(r["target"], r["target"], MATRIX)).runs.append(r)
    matrix_targets = set(columns)
    user_skipped = undefined_baselines([_as_run(r, r["target"]) for r in user])
    for r in sorted(user, key=lambda r: (r["target"], r["source"], r.get("batch_id") or "", r["seed"] or 0)):
        if r["target"] in user_skipped:
            continue
        key = r["target"] if r["target"] not in matrix_targets and r["target"] not in skipped \
            else f"{r['target']} (yours)"
        columns.setdefault(key, _Column(key, r["target"], USER)).runs.append({**r, "target": key})
    skipped.update({f"{t} (yours)" if t in matrix_targets else t: why for t, why in user_skipped.items()})

    cells: dict[tuple[str, str], dict[str, Any]] = {}
    for column in columns.values():
        by_source: dict[str, list[dict[str, Any]]] = {}
        for r in column.runs:
            by_source.setdefault(r["source"], []).append(r)
        for source, runs in by_source.items():
            cells[(source, column.name)] = _cell(source, column.name, runs)

    shipped_cols = sorted(c for c in columns if columns[c].origin == MATRIX)
    matrix_sources = sorted({s for (s, t) in cells if t in matrix_targets})
    other_sources = sorted({s for (s, _) in cells} - set(matrix_sources))

    def gain(source: str, target: str) -> float:
        value = (cells.get((source, target)) or {}).get("mean_gain")
        return math.nan if value is None else float(value)

    rows = [matrix_sources[i] for i in cluster_order([[gain(s, t) for t in shipped_cols] for s in matrix_sources])]
    cols = [shipped_cols[i] for i in cluster_order([[gain(s, t) for s in matrix_sources] for t in shipped_cols])]
    rows += other_sources
    cols += sorted(c for c in columns if columns[c].origin == USER)

    info = informativeness([_as_run(r, c.name) for c in columns.values() for r in c.runs],
                           {t: v for t, v in majority.items() if t in matrix_targets})
    targets = [{"name": c, "label": columns[c].label, "origin": columns[c].origin, **info[c]} for c in cols]
    sources = []
    for s in rows:
        values = [g for t in cols if not math.isnan(g := gain(s, t))]
        origins = sorted({o for t in cols for o in (cells.get((s, t)) or {}).get("origins", [])})
        sources.append({"name": s, "origins": origins, "mean_gain": fmean(values) if values else None,
                        "targets": len(values)})
    present = bool(matrix_runs)
    return {
        "matrix": {"path": matrix_path, "present": present, "runs": len(matrix_runs),
                   "model": sidecar.get("model"), "target_regime": sidecar.get("target_regime"),
                   "source_regime": sidecar.get("source_regime"), "problems": list(problems),
                   "cost": matrix_cost(matrix_runs, sidecar)},
        "rule": INFORMATIVE_RULE,
        "gain": "relative gain in % of the no-transfer baseline: (mean score - mean baseline) / mean baseline "
                "x 100 over the cell's runs; seed sd: sample sd of the runs' own relative gains",
        "sources": sources,
        "targets": targets,
        "cells": [cells[(s, t)] for s in rows for t in cols if (s, t) in cells],
        "skipped_targets": skipped,
        "user_runs": len(user),
    }


def matrix_cost(matrix_runs: Sequence[dict[str, Any]], sidecar: Mapping[str, Any]) -> dict[str, Any]:
    """What the matrix cost to measure, from its rows and sidecar: seconds per target run (the rows'
    `seconds`), each source's last recorded training, and every sitting that did work (a sitting retrains
    the sources whose checkpoints it lacks, so its `source_s` counts retraining too)."""
    seconds = sorted(float(r["seconds"]) for r in matrix_runs if r.get("seconds") is not None)
    runs: dict[str, Any] = {"runs": len(matrix_runs), "timed": len(seconds)}
    if seconds:
        runs.update(total_s=round(sum(seconds), 1), median_s=round(float(np.median(seconds)), 1),
                    min_s=seconds[0], max_s=seconds[-1])
    trained = {name: float(v["seconds"]) for name, v in (sidecar.get("sources") or {}).items()
               if isinstance(v, Mapping) and v.get("seconds") is not None}
    sittings: list[dict[str, Any]] = [
        {"started": s.get("started"), "phase": s.get("phase"), "device": s.get("device"), "workers": s.get("workers"),
         "units": int(s.get("units") or 0), "wall_s": float(s.get("wall_s") or 0.0),
         "source_s": float(s.get("source_s") or 0.0), "target_s": float(s.get("target_s") or 0.0)}
        for s in sidecar.get("sessions") or [] if isinstance(s, Mapping) and s.get("units")]
    return {
        "target_runs": runs,
        "sources": {"trained": len(trained), "total_s": round(sum(trained.values()), 1),
                    "min_s": min(trained.values(), default=None), "max_s": max(trained.values(), default=None),
                    "slowest": max(trained, key=lambda k: trained[k]) if trained else None},
        "sittings": sittings,
        "totals": {"sittings": len(sittings), "wall_s": round(sum(s["wall_s"] for s in sittings), 1),
                   "source_s": round(sum(s["source_s"] for s in sittings), 1),
                   "target_s": round(sum(s["target_s"] for s in sittings), 1),
                   "devices": sorted({str(s["device"]) for s in sittings})},
    }


def describe_cost(cost: Mapping[str, Any]) -> str:
    """`matrix_cost` in one sentence, the same wherever it is shown (CLI, page, README block); "" when no
    run was timed."""
    runs, sources = cost["target_runs"], cost["sources"]
    if not runs.get("timed"):
        return ""
    text = (f"a target run took {runs['median_s']:.0f} s (median; {runs['min_s']:.0f}-{runs['max_s']:.0f} s), "
            f"{runs['total_s'] / 3600:.1f} CPU-hours for {runs['timed']} timed runs")
    if sources["trained"]:
        text += (f"; each source's last training {sources['min_s']:.0f}-{sources['max_s']:.0f} s ({sources['slowest']} "
                 f"slowest), {sources['total_s'] / 3600:.1f} CPU-hours for {sources['trained']} sources")
    return text


def matrix_coverage(matrix_runs: Sequence[dict[str, Any]], sources: Iterable[str],
                    targets: Iterable[str] = ()) -> dict[str, dict[str, Any]]:
    """Per target (measured ones, then `targets` not yet measured): the sources measured, the sources
    still missing (every source but the target itself), the seeds, and the measured sources that lack one
    of those seeds (`short`, a run stopped between seeds); what a resumed run has left."""
    sources = sorted(set(sources))
    by_target: dict[str, dict[str, set[Any]]] = {}
    for r in matrix_runs:
        by_target.setdefault(r["target"], {}).setdefault(r["source"], set()).add(r.get("seed"))
    for t in targets:
        by_target.setdefault(t, {})
    coverage = {}
    for t, measured in by_target.items():
        seeds = sorted({seed for seeds in measured.values() for seed in seeds if seed is not None})
        coverage[t] = {"sources": len(measured), "missing": [s for s in sources if s != t and s not in measured],
                       "seeds": seeds, "short": sorted(s for s, got in measured.items() if not set(seeds) <= got)}
    return coverage


def load_view(path: Path | None = None, user: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    """`build_view` of the matrix at `path` (default: the shipped one) and its sidecar."""
    path = path or DEFAULT_MATRIX
    runs, problems = read_matrix_runs(path)
    shown = "library/default/transfer_matrix.csv (shipped)" if path == DEFAULT_MATRIX else str(path)
    return build_view(runs, read_sidecar(sidecar_path(path)), user, matrix_path=shown, problems=problems)


def select_cells(view: Mapping[str, Any], source: str | None = None, target: str | None = None) -> list[dict]:
    """The view's cells for one source and/or one target (every cell when neither is given)."""
    return [c for c in view["cells"] if (source is None or c["source"] == source)
            and (target is None or c["target"] == target)]
