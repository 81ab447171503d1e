"""The ensemble: the TextEmb, SEmb and (fused) TaskEmb rankings fused again by reciprocal rank fusion."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from library.methods.base import Entry, RankContext, RankingMethod, rrf

PARTS = ("textemb", "semb", "taskemb")


def _rank(ctx: RankContext) -> list[Entry]:
    return rrf({part: ctx.by_embedding(part) for part in PARTS})


def _explain(details: Mapping[str, Mapping[str, Any]]) -> str:
    """Each part's rank of the source, in the parts' order."""
    return "  ".join(f"{part} {int(details[part]['rank'])}" for part in PARTS if part in details)


ENSEMBLE = RankingMethod(
    name="ensemble", label="Ensemble",
    description="TextEmb, SEmb and TaskEmb rankings fused (reciprocal rank fusion)",
    needs=PARTS, rank=_rank, explain=_explain, score_label="reciprocal rank fusion score",
    map_basis="textemb")
