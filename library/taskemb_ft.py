"""Checkpoint-based TaskEmb (`taskemb_ft`) for the library's sources, from their cached fine-tuned encoders.

Vu et al. (2020) compute a task's TaskEmb from a model fine-tuned on it; the library's `taskemb` is
read from a briefly trained head on the frozen base encoder instead (a target uploaded to the service
has no fine-tuned checkpoint, and embedding it must stay cheap). For the sources, the practitioner-
regime checkpoints the transfer matrix trains (`embeddings.transfer.SOURCE_REGIME`) are cached, so
their TaskEmb can be read from the encoder fine-tuned on them. They are stored beside the old vectors
as a separate embedding method, `taskemb_ft`, which the `taskemb_ft` ranking method searches with the
target's ordinary `taskemb`: the asymmetry (fine-tuned sources, briefly trained target) is the
method's, and is said so in its description. Like `build_esms`, this trains nothing: a source
without a checkpoint is reported with the command that trains it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

from embeddings.data import TaskType
from embeddings.encoders import Encoder
from embeddings.options import ProgressFn, no_progress
from embeddings.taskemb import FINETUNED_METHOD, fisher_embedding_from_checkpoint
from library.build import BuildOptions
from library.source_checkpoints import SourceBuildReport, load_source, scan_source_checkpoints
from library.store import LibraryStore

TASKEMB_FT = FINETUNED_METHOD
# Built for the text sources, the ones the transfer matrix evaluates it on (the source regime trains every
# task type, and ESMs are fitted for all of them).
TEXT_TYPES = (TaskType.CLASSIFICATION.value, TaskType.REGRESSION.value)
BUILD_HINT = ("build them with `taskrank library build-taskemb-ft` once the sources' checkpoints are trained "
              "(`python bench/transfer_matrix.py --phase sources`)")


def stored_checkpoints(store: LibraryStore, model_hash: str) -> dict[int, str]:
    """task id -> sha256 of the checkpoint its stored `taskemb_ft` was computed from."""
    out: dict[int, str] = {}
    for task in store.list_tasks():
        for e in store.task_embeddings(task.id):
            if e.method == TASKEMB_FT and e.model_hash == model_hash:
                out[task.id] = str(e.options.get("checkpoint_sha256", ""))
                break
    return out


def build_finetuned_taskembs(store: LibraryStore, data_dir: Path, encoder: Encoder, checkpoint_dirs: Iterable[Path],
                             options: BuildOptions, *, only: Iterable[str] | None = None,
                             on_progress: ProgressFn = no_progress) -> SourceBuildReport:
    """A `taskemb_ft` for every library source with a cached fine-tuned checkpoint; idempotent.

    Each source is embedded on the rows its `taskemb` was (the library's row cap and seed) with the
    library's TaskEmb options, so the two variants differ only in the encoder the Fisher is read from.
    A source whose stored vector came from the same checkpoint file (by sha256) is kept.
    """
    report = SourceBuildReport()
    have = stored_checkpoints(store, encoder.weights_hash)
    taskemb_options = options.taskemb_options()
    for found in scan_source_checkpoints(store, data_dir, encoder, checkpoint_dirs, report, only=only,
                                         task_types=TEXT_TYPES, on_progress=on_progress):
        task = found.task
        if have.get(task.id) == found.sha256:
            report.kept.append(task.name)
            continue
        started = time.perf_counter()
        sample = load_source(found.folder, options.max_rows, options.seed)
        result = fisher_embedding_from_checkpoint(sample, encoder, found.path, taskemb_options)
        store.add_embedding(task.id, result)
        report.built[task.name] = {"checkpoint": found.path.name, "checkpoint_sha256": found.sha256,
                                   "rows": len(sample), "seconds": round(time.perf_counter() - started, 1)}
    return report
