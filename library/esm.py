"""Embedding space maps (ESMs) for the library's sources, and the target rows that LogME scores.

An ESM (Schulte et al., EMNLP 2024) approximates how fine-tuning on a source moves the base
encoder's pooled embeddings: an affine map fitted on the source's own rows, from their base
embeddings to their embeddings under the encoder fine-tuned on the source. The fine-tuned encoders
are the cached source checkpoints of the practitioner regime (`embeddings.transfer.SOURCE_REGIME`,
the shipped transfer matrix's), so `build_esms` trains nothing: a source without a checkpoint is
reported with the command that trains it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, cast

import numpy as np

from embeddings.data import Dataset, TaskType
from embeddings.encoders import Encoder
from embeddings.esm import fit_esm, pooled_embeddings, token_embeddings, token_tags
from embeddings.options import EmbedOptions, ProgressFn, no_progress
from library.errors import LibraryError
from library.source_checkpoints import SourceBuildReport, load_source, scan_source_checkpoints
from library.store import LibraryStore

ESM = "esm"
ESM_ROWS = 4000  # source rows an ESM is fitted on (20% held out for its R^2); 1,000 gave R^2 0.13 (mnli) and 0.52 (sst2), 4,000 gave 0.22 and 0.63


def build_esms(store: LibraryStore, data_dir: Path, encoder: Encoder, checkpoint_dirs: Iterable[Path],
               embed_options: EmbedOptions, *, only: Iterable[str] | None = None, rows: int = ESM_ROWS,
               seed: int = 13, on_progress: ProgressFn = no_progress) -> SourceBuildReport:
    """An ESM for every library source that has a cached fine-tuned checkpoint, of any task type; idempotent.

    The map is fitted on the source's pooled rows (for a tagging or QA source, its sentences or
    question-context pairs pooled as SEmb pools them), whichever head the checkpoint was trained with.
    A source whose stored map came from the same checkpoint file name is kept.
    """
    from safetensors.torch import load_file

    report = SourceBuildReport()
    have = {m.task_id: m for m in store.source_maps(ESM, encoder.weights_hash)}
    for found in scan_source_checkpoints(store, data_dir, encoder, checkpoint_dirs, report, only=only,
                                         on_progress=on_progress):
        task, path = found.task, found.path
        if task.id in have and have[task.id].checkpoint == path.name:
            report.kept.append(task.name)
            continue
        started = time.perf_counter()
        sample = load_source(found.folder, rows, seed)
        base = pooled_embeddings(sample, encoder, None, embed_options)
        tuned = pooled_embeddings(sample, encoder, load_file(str(path), device=str(encoder.device)), embed_options)
        esm = fit_esm(base, tuned, seed=seed)
        info = {"r2_heldout": round(float(esm.r2_heldout), 4), "rows": esm.rows, "ridge": esm.ridge,
                "checkpoint_sha256": found.sha256, "fitted_rows": len(sample), "seed": seed,
                "seconds": round(time.perf_counter() - started, 1)}
        store.put_source_map(task.id, ESM, encoder.name, encoder.weights_hash, path.name, esm.weight, esm.bias, info)
        report.built[task.name] = info
    return report


def target_labels(dataset: Dataset) -> tuple[np.ndarray, bool]:
    """(labels, regression) for LogME: class ids or float scores; a clear error for what it cannot score.

    For sequence labelling: every word's tag id (LogME scores a token sample of them, `row_labels`).
    """
    if dataset.task_type == TaskType.QUESTION_ANSWERING:
        raise LibraryError("LogME-based ranking is not supported for question answering (answer spans are "
                           "not labels of rows or tokens): use textemb, semb or taskemb")
    if dataset.task_type == TaskType.SEQUENCE_LABELING:
        return _tag_ids(dataset), False
    values = [getattr(e, "label", None) for e in dataset.examples]
    if any(v is None or v == "" for v in values):
        raise LibraryError("LogME-based ranking needs a label on every row (this target has unlabelled rows): "
                           "use textemb or semb")
    if dataset.task_type == TaskType.REGRESSION:
        return np.asarray([float(cast(float, v)) for v in values], dtype=np.float64), True
    names = sorted({str(v) for v in values})
    if len(names) < 2:
        raise LibraryError("LogME-based ranking needs at least two classes in the target's labels")
    index = {n: i for i, n in enumerate(names)}
    return np.asarray([index[str(v)] for v in values], dtype=np.int64), False


def _tag_ids(dataset: Dataset) -> np.ndarray:
    tags = [t for e in dataset.examples for t in getattr(e, "tags", None) or []]
    if not tags or any(t is None or t == "" for t in tags):
        raise LibraryError("LogME-based ranking needs a tag on every word (this target has untagged words): "
                           "use textemb or semb")
    names = sorted(set(tags))
    if len(names) < 2:
        raise LibraryError("LogME-based ranking needs at least two distinct tags in the target")
    index = {n: i for i, n in enumerate(names)}
    return np.asarray([index[t] for t in tags], dtype=np.int64)


def row_labels(dataset: Dataset, encoder: Encoder, options: EmbedOptions) -> tuple[np.ndarray, bool]:
    """What LogME scores the target's rows against: a label per row, or for sequence labelling the tag of
    each token in the target's token sample (`embeddings.esm.TOKEN_BUDGET` tokens, from tokenisation)."""
    labels, regression = target_labels(dataset)
    if dataset.task_type != TaskType.SEQUENCE_LABELING:
        return labels, regression
    tags = token_tags(dataset, encoder, options)
    if len(np.unique(tags)) < 2:
        raise LibraryError("the target's token sample has fewer than two distinct tags")
    return tags, False


def row_features(dataset: Dataset, encoder: Encoder, state_dict: Any, options: EmbedOptions) -> np.ndarray:
    """The target's LogME rows under the base encoder (`state_dict` None) or a fine-tuned one: pooled
    sentence rows, or for sequence labelling the token sample's first-sub-token states (`token_embeddings`)."""
    if dataset.task_type == TaskType.SEQUENCE_LABELING:
        return token_embeddings(dataset, encoder, state_dict, options)[0]
    return pooled_embeddings(dataset, encoder, state_dict, options)
