"""TaskEmb (Vu et al. 2020): every Fisher component ranks the sources; the rankings are fused by RRF."""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from typing import Any

from library.methods.base import Entry, RankContext, RankingMethod


def _rank(ctx: RankContext) -> list[Entry]:
    return ctx.by_embedding("taskemb")


def _explain(details: Mapping[str, Mapping[str, Any]]) -> str:
    """The best, median and worst component rank, so a source carried by one layer shows as such."""
    ranks = {c: int(d["rank"]) for c, d in details.items()}
    if not ranks:
        return ""
    best = min(ranks, key=lambda c: (ranks[c], c))
    worst = max(ranks, key=lambda c: (ranks[c], c))
    median = statistics.median(ranks.values())
    return f"{len(ranks)} components: best {ranks[best]} ({best}), median {median:g}, worst {ranks[worst]} ({worst})"


TASKEMB = RankingMethod(
    name="taskemb", label="TaskEmb", description="Fisher information of a briefly trained head: what the task asks",
    needs=("taskemb",), rank=_rank, explain=_explain, score_label="reciprocal rank fusion score",
    map_basis="taskemb")
