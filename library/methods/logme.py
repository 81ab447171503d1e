"""ESM-LogME (Schulte et al., EMNLP 2024) and LogME (You et al., ICML 2021): rank sources by how well
the target's *labels* are explained by the target's features after the source's fine-tuning.

`esm_logme` embeds the target's rows once with the base encoder (SEmb's pooling) and pushes them
through each source's embedding space map (`library.esm`); `logme` embeds them with every source's
fine-tuned encoder itself (the cached checkpoints the ESMs were fitted from): exact, and one forward
pass per source. Both score with the LogME evidence (higher: the labels are more linearly
predictable). Sources without an ESM (or checkpoint) are left out of the ranking and named in the
error when none is left.

A sequence-labelling target is scored on tokens: a seeded sample of `embeddings.esm.TOKEN_BUDGET`
words (first sub-token of each) with their tags, ranked against every source with a map (of any task
type: tagging and QA sources' maps are fitted on their pooled sentences too). ESMs were fitted on pooled
sentence vectors, so
mapping token states through them is an approximation; `logme` is exact here too. Question answering
is refused with the methods that work (`library.esm.target_labels`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from library.errors import LibraryError
from library.methods.base import Entry, RankContext, RankingMethod, TargetRows, assign_ranks

ESM_KIND = "esm"
BUILD_HINT = ("build them with `taskrank library build-esm` (it needs the sources' fine-tuned checkpoints: "
              "`python bench/transfer_matrix.py --phase sources`)")


def _target(rows: TargetRows) -> tuple[np.ndarray, np.ndarray, bool, Any]:
    """The target's base rows (the library's row cap and seed; a token sample for sequence labelling),
    its labels, and the sample."""
    labels, regression = rows.labels()
    features = rows.base_features()
    if len(features) != len(labels):
        raise LibraryError("the target's rows and labels disagree in number (long rows split into windows?)")
    return features, labels, regression, rows.dataset


def _eligible(ctx: RankContext) -> Mapping[int, Any]:
    """The sources a LogME-based ranking may score. A sequence-labelling target is ranked against every
    source with a map (only classification and regression sources have fine-tuned encoders and ESMs),
    whatever the task-type filter; the target itself stays excluded."""
    rows = ctx.rows
    assert rows is not None
    if rows.dataset.task_type.value != "sequence_labeling" or rows.store is None:
        return ctx.eligible
    excluded = {h.lower() for h in (rows.target_hash, rows.dataset.content_hash) if h}
    return {t.id: t for t in rows.store.list_tasks() if t.data_hash not in excluded}


def _maps(ctx: RankContext) -> list[Any]:
    rows = ctx.rows
    assert rows is not None
    eligible = _eligible(ctx)
    maps = [m for m in rows.store.source_maps(ESM_KIND, rows.encoder.weights_hash) if m.task_id in eligible]
    if not maps:
        raise LibraryError(f"no eligible source has an embedding space map for this model: {BUILD_HINT}")
    return maps


def _entries(ctx: RankContext, maps: list[Any], scores: np.ndarray, method: str) -> list[Entry]:
    entries = []
    eligible = _eligible(ctx)
    for m, score in zip(maps, scores.tolist(), strict=True):
        details: dict[str, dict[str, float | int]] = {method: {"logme": float(score)}}
        if method == "esm_logme":
            details[method]["esm_r2"] = float(m.info.get("r2_heldout", math.nan))
        entries.append(Entry(task=eligible[m.task_id], score=float(score), similarity=float(score),
                             details=details))
    ranked = assign_ranks(entries)
    for entry in ranked:  # the shape every ranking's details share (pages, CSV export): rank and similarity
        entry.details[method].update(rank=entry.rank, similarity=entry.score)
    return ranked


def _rank_esm_logme(ctx: RankContext) -> list[Entry]:
    from embeddings.esm import EmbeddingSpaceMap, esm_logme_scores

    assert ctx.rows is not None
    features, labels, regression, _ = _target(ctx.rows)
    maps = _maps(ctx)
    esms = [EmbeddingSpaceMap(weight=m.weight, bias=m.bias, r2_heldout=float(m.info.get("r2_heldout", math.nan)),
                              rows=int(m.info.get("rows", 0)), ridge=float(m.info.get("ridge", 0.0))) for m in maps]
    scores = esm_logme_scores(features, labels, esms, regression=regression)
    return _entries(ctx, maps, np.asarray(scores), "esm_logme")


def _rank_logme(ctx: RankContext) -> list[Entry]:
    from library.logme_evidence import EvidenceKey

    rows = ctx.rows
    assert rows is not None
    maps = _maps(ctx)
    keys = [EvidenceKey(rows_hash=rows.dataset.content_hash, model_hash=rows.encoder.weights_hash,
                        rows_key=rows.rows_key, checkpoint=m.checkpoint) for m in maps]
    scored: list[tuple[int, float]] = []  # (position in maps, evidence): the maps' order breaks ties
    todo: list[tuple[int, EvidenceKey, Path]] = []
    missing = []
    for i, (m, key) in enumerate(zip(maps, keys, strict=True)):
        known = rows.evidence.get(key) if rows.evidence is not None and rows.rows_key else None
        path = next((Path(d) / m.checkpoint for d in rows.checkpoint_dirs if (Path(d) / m.checkpoint).is_file()), None)
        if known is not None:
            scored.append((i, known))
        elif path is not None:
            todo.append((i, key, path))
        else:
            missing.append(m)
    if todo:
        from safetensors.torch import load_file

        from embeddings.logme import logme

        labels, regression = rows.labels()
        for i, key, path in todo:
            state = load_file(str(path), device=str(rows.encoder.device))
            value = float(logme(rows.features_under(state), labels, regression=regression))
            if rows.evidence is not None and rows.rows_key:
                rows.evidence.put(key, value, maps[i].task_name)
            scored.append((i, value))
    if not scored:
        names = ", ".join(m.task_name for m in missing)
        raise LibraryError(f"exact LogME needs the sources' fine-tuned checkpoints, none of which is cached here "
                           f"(missing: {names}); train them with `python bench/transfer_matrix.py --phase sources` "
                           "or rank with esm_logme, which needs only the shipped maps")
    if missing:
        ctx.notes.append(f"logme: no cached checkpoint or recorded evidence for {', '.join(m.task_name for m in missing)}"
                         " (left out; `python bench/transfer_matrix.py --phase sources` trains them)")
    scored.sort()
    return _entries(ctx, [maps[i] for i, _ in scored], np.asarray([v for _, v in scored]), "logme")


def _explain(details: Mapping[str, Mapping[str, Any]]) -> str:
    part = next(iter(details.values()), {})
    text = f"LogME {float(part.get('logme', math.nan)):.3f}"
    if "esm_r2" in part:
        text += f" (ESM R² {float(part['esm_r2']):.2f})"
    return text


ESM_LOGME = RankingMethod(
    name="esm_logme", label="ESM-LogME",
    description="how well the target's labels are explained after each source's fine-tuning, "
                "approximated by the source's embedding space map (Schulte et al. 2024)",
    needs=(), rank=_rank_esm_logme, explain=_explain, score_label="LogME evidence", map_basis="semb",
    needs_rows=True, needs_maps=(ESM_KIND,))

LOGME = RankingMethod(
    name="logme", label="LogME",
    description="how well the target's labels are explained by each fine-tuned source encoder's features "
                "(You et al. 2021; one forward pass per source)",
    needs=(), rank=_rank_logme, explain=_explain, score_label="LogME evidence", map_basis="semb",
    needs_rows=True, needs_maps=(ESM_KIND,), needs_checkpoints=True)
