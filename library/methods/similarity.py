"""TextEmb and SEmb (Vu et al. 2020): rank sources by the similarity of one target vector."""

from __future__ import annotations

from library.methods.base import RankContext, RankingMethod, similarity_explain


def _by(method: str):  # type: ignore[no-untyped-def]
    def rank(ctx: RankContext):  # type: ignore[no-untyped-def]
        return ctx.by_embedding(method)
    return rank


TEXTEMB = RankingMethod(
    name="textemb", label="TextEmb", description="mean of the encoder's token embeddings: what the text is about",
    needs=("textemb",), rank=_by("textemb"), explain=similarity_explain, score_label="similarity",
    map_basis="textemb")

SEMB = RankingMethod(
    name="semb", label="SEmb", description="sentence embeddings: domain and style",
    needs=("semb",), rank=_by("semb"), explain=similarity_explain, score_label="similarity", map_basis="semb")
