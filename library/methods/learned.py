"""The learned ranker as a ranking method: the score is the expected relative gain (%) of training on the
source first, with an 80% interval, P(gain > 0) and the features that moved it most (`library.ranker`).

It ranks every library source (the task-type filter applies after), so its features are computed as at
fit time. With no fitted ranker (a library without a transfer matrix in its regime, and no recorded
transfers yet) it says so and ranks by the best unlearned method, naming it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from library.errors import LibraryError
from library.methods.base import Entry, RankContext, RankingMethod, assign_ranks, rrf
from library.methods.ensemble import PARTS  # TextEmb, SEmb and TaskEmb: what the features are read from

FALLBACK = "ensemble"  # the best unlearned method when no validation says otherwise


def _rankings(ctx: RankContext) -> dict[str, list[Entry]]:
    out: dict[str, list[Entry]] = {part: ctx.by_embedding(part) for part in PARTS}
    out["ensemble"] = rrf({part: ctx.by_embedding(part) for part in PARTS})
    if ctx.rows is not None:
        from library.methods import RANKING_METHODS

        try:
            out["esm_logme"] = RANKING_METHODS.get("esm_logme").rank(ctx)
        except LibraryError:
            pass  # no maps for this encoder: the feature is missing, as at fit time
    return out


def _facts(ctx: RankContext) -> Any:
    from library.ranker import TaskFacts, facts_from_dataset

    dataset = ctx.dataset if ctx.dataset is not None else (ctx.rows.dataset if ctx.rows is not None else None)
    textemb = ctx.targets.get("textemb")
    if dataset is not None:
        return facts_from_dataset(dataset, textemb)
    first = next(iter(ctx.targets.values()))
    return TaskFacts(task_type=first.task_type, tokens_per_row=(textemb.num_tokens / textemb.num_examples)
                     if textemb is not None and textemb.num_examples else None)


def _rank(ctx: RankContext) -> list[Entry]:
    from library.ranker import TaskFacts, active_ranker, pair_features
    from library.ranker_store import RankerStore

    rankings = _rankings(ctx)
    facts = _facts(ctx)
    version, model = (None, None)
    if ctx.store is not None:
        ranker_store = RankerStore.for_engine(ctx.store.engine)
        version, model = active_ranker(ranker_store)
    stored = model.source_facts if model is not None else {}
    source_facts = {}
    for task in ctx.eligible.values():
        known = stored.get(task.name)
        if known is not None:
            source_facts[task.name] = TaskFacts.from_dict(known)
        else:
            from library.ranker import facts_from_task

            source_facts[task.name] = facts_from_task(task)
    features = pair_features(facts, source_facts, rankings)
    ctx.info["target_facts"] = facts.to_dict()
    target_hash = next(iter(ctx.targets.values())).dataset_hash if ctx.targets else (
        ctx.rows.target_hash if ctx.rows is not None else None)
    by_name = {t.name: t for t in ctx.eligible.values()}
    if model is None or version is None:
        fallback = FALLBACK
        entries = rankings[fallback]
        ctx.info.update(ranker_version=None, fallback=fallback,
                        note=f"no learned ranker is fitted yet (no transfer matrix in this library's regime and no "
                             f"recorded transfers; `taskrank ranker fit`): ranked by {fallback}")
        for e in entries:
            e.details = {NAME: {"rank": e.rank, "similarity": e.score, "fallback": fallback,
                                "features": _json(features.get(e.task.name, {}))}, **e.details}
        return entries
    predictions = model.predict(features, target_hash)
    prior = model.prior_for(sorted(features), target_hash)
    ctx.info.update(ranker_version=version.id, candidate=model.candidate,
                    fitted_at=version.created_at.isoformat(), interval=f"{round(100 * (model.quantiles[1] - model.quantiles[0]))}%")
    entries = []
    for name, p in predictions.items():
        if name not in by_name:
            continue
        entries.append(Entry(task=by_name[name], score=p.expected, similarity=p.expected, details={NAME: {
            "expected_gain": p.expected, "low": p.low, "high": p.high, "p_helps": p.p_helps,
            "unlikely_to_help": p.p_helps < 0.5, "ranker_version": version.id, "reasons": p.reasons,
            "features": _json({**features[name], **prior[name]}), "similarity": p.expected}}))
    ranked = assign_ranks(entries)
    for e in ranked:
        e.details[NAME]["rank"] = e.rank
    return ranked


NAME = "learned"


def _json(values: Mapping[str, float]) -> dict[str, float | None]:
    """Missing features as None, not NaN: rankings are stored as JSON (PostgreSQL's JSONB has no NaN)."""
    return {k: (v if math.isfinite(v) else None) for k, v in values.items()}


def _fmt(x: Any) -> str:
    return f"{float(x):+.1f}%" if x is not None and math.isfinite(float(x)) else "?"


def explain(details: Mapping[str, Mapping[str, Any]]) -> str:
    """'+6.0% expected (+2.0%..+10.0%), helps with 85% probability: close text domain (SEmb rank 2), ...'"""
    part = details.get(NAME, {})
    if "expected_gain" not in part:
        fallback = part.get("fallback", FALLBACK)
        ranks = "  ".join(f"{p} {int(d['rank'])}" for p, d in details.items()
                          if p in PARTS and isinstance(d, Mapping) and "rank" in d)
        return f"no learned ranker yet: by {fallback} ({ranks})"
    reasons = ", ".join(str(r.get("text")) for r in part.get("reasons") or [])
    text = (f"{_fmt(part['expected_gain'])} expected ({_fmt(part.get('low'))}..{_fmt(part.get('high'))}), "
            f"helps with {float(part.get('p_helps', 0)):.0%} probability")
    if part.get("unlikely_to_help"):
        text += " (unlikely to help)"
    return f"{text}: {reasons}" if reasons else text


LEARNED = RankingMethod(
    name=NAME, label="Learned",
    description="expected relative gain, learned from measured transfers (the shipped matrix and every transfer "
                "run here), with an 80 per cent interval and P(helps)",
    needs=PARTS, rank=_rank, explain=explain, score_label="expected gain (%)", map_basis="semb",
    wants_rows=True, ranks_all=True, trained=True)
