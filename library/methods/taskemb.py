"""TaskEmb (Vu et al. 2020): every Fisher component ranks the sources; the rankings are fused by RRF.

`taskemb` compares the target's TaskEmb with the sources' (both from a briefly trained head on the
frozen base encoder). `taskemb_ft` compares the same target TaskEmb with the sources' checkpoint-based
TaskEmb (read from each source's fine-tuned encoder, `library.taskemb_ft`): Vu et al. read the
sources' TaskEmb from fine-tuned models, but a user's target has no fine-tuned checkpoint when it is
ranked, so its side stays the briefly trained one. Sources without a checkpoint-based vector are
left out of that ranking (never mixed in with their old vectors) and named in the ranking's notes.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from typing import Any

from library.errors import LibraryError
from library.methods.base import Entry, RankContext, RankingMethod


def _rank(ctx: RankContext) -> list[Entry]:
    return ctx.by_embedding("taskemb")


def _rank_finetuned(ctx: RankContext) -> list[Entry]:
    from library.taskemb_ft import BUILD_HINT, TASKEMB_FT

    try:
        entries = ctx.by_embedding("taskemb", against=TASKEMB_FT)
    except LibraryError as exc:
        if f"no {TASKEMB_FT} embeddings" in str(exc):
            raise LibraryError(f"no library source has a checkpoint-based TaskEmb ({TASKEMB_FT}): {BUILD_HINT}; "
                               "or rank with taskemb") from None
        raise
    ranked = {e.task.id for e in entries}
    left_out = sorted(t.name for i, t in ctx.eligible.items() if i not in ranked)
    if not entries:
        raise LibraryError(f"no eligible source has a checkpoint-based TaskEmb ({TASKEMB_FT}; missing for "
                           f"{', '.join(left_out)}): {BUILD_HINT}; or rank with taskemb")
    if left_out:
        ctx.notes.append(f"{TASKEMB_FT}: {len(left_out)} eligible source(s) without a checkpoint-based TaskEmb are "
                         f"left out of this ranking: {', '.join(left_out)}; {BUILD_HINT}")
    return entries


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


TASKEMB_FT = RankingMethod(
    name="taskemb_ft", label="TaskEmb (fine-tuned sources)",
    description="Fisher information of each source's fine-tuned encoder (Vu et al.'s setting) against the "
                "target's briefly trained TaskEmb; sources without a fine-tuned checkpoint are left out",
    needs=("taskemb",), rank=_rank_finetuned, explain=_explain, score_label="reciprocal rank fusion score",
    map_basis="taskemb_ft", needs_library=("taskemb_ft",))
