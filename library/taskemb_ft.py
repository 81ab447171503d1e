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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from embeddings.data import LoadLimits, TaskType, load_dataset
from embeddings.encoders import Encoder
from embeddings.options import ProgressFn, no_progress
from embeddings.taskemb import FINETUNED_METHOD, checkpoint_sha256, fisher_embedding_from_checkpoint
from library.build import BuildOptions
from library.errors import LibraryError
from library.store import LibraryStore

TASKEMB_FT = FINETUNED_METHOD
# The source regime fine-tunes classification and regression sources only (like the ESMs).
TEXT_TYPES = (TaskType.CLASSIFICATION.value, TaskType.REGRESSION.value)
TRAIN_HINT = "train them with `python bench/transfer_matrix.py --phase sources`"
BUILD_HINT = ("build them with `taskrank library build-taskemb-ft` once the sources' checkpoints are trained "
              "(`python bench/transfer_matrix.py --phase sources`)")
_LIMITS = LoadLimits(max_rows=1_000_000, max_text_chars=1_000_000)  # as `library.build` loads sources


@dataclass
class TaskEmbFtReport:
    built: dict[str, dict[str, Any]] = field(default_factory=dict)  # task -> {checkpoint, rows, seconds}
    kept: list[str] = field(default_factory=list)  # already computed from this checkpoint
    missing_checkpoint: list[str] = field(default_factory=list)
    no_data: list[str] = field(default_factory=list)
    unsupported: list[str] = field(default_factory=list)  # task types without a source regime yet


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
                             on_progress: ProgressFn = no_progress) -> TaskEmbFtReport:
    """A `taskemb_ft` for every library source with a cached fine-tuned checkpoint; idempotent.

    Each source is embedded on the rows its `taskemb` was (the library's row cap and seed) with the
    library's TaskEmb options, so the two variants differ only in the encoder the Fisher is read from.
    A source whose stored vector came from the same checkpoint file (by sha256) is kept.
    """
    from library.esm import find_source_checkpoint

    report = TaskEmbFtReport()
    dirs = [Path(d) for d in checkpoint_dirs]
    wanted = set(only) if only is not None else None
    tasks = [t for t in store.list_tasks() if wanted is None or t.name in wanted]
    if wanted is not None and len(tasks) != len(wanted):
        unknown = sorted(wanted - {t.name for t in tasks})
        raise LibraryError(f"no source task(s) {', '.join(unknown)} in the library")
    have = stored_checkpoints(store, encoder.weights_hash)
    taskemb_options = options.taskemb_options()
    for done, task in enumerate(tasks):
        on_progress(done, len(tasks))
        if task.task_type not in TEXT_TYPES:
            report.unsupported.append(task.name)
            continue
        folder = Path(data_dir) / task.name
        if not (folder / "task.json").is_file():
            report.no_data.append(task.name)
            continue
        path = find_source_checkpoint(folder, encoder, dirs)
        if path is None:
            report.missing_checkpoint.append(task.name)
            continue
        digest = checkpoint_sha256(path)
        if have.get(task.id) == digest:
            report.kept.append(task.name)
            continue
        started = time.perf_counter()
        sample = load_dataset(folder, split="train", limits=_LIMITS).subsample(options.max_rows, options.seed)
        result = fisher_embedding_from_checkpoint(sample, encoder, path, taskemb_options)
        store.add_embedding(task.id, result)
        report.built[task.name] = {"checkpoint": path.name, "checkpoint_sha256": digest, "rows": len(sample),
                                   "seconds": round(time.perf_counter() - started, 1)}
    on_progress(len(tasks), len(tasks))
    return report
