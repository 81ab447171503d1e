"""The library's sources and their cached practitioner-regime checkpoints, scanned in one place.

Every artefact read from an encoder fine-tuned on a source (ESMs, `taskemb_ft`) needs the same walk:
which library sources are wanted, which have their task folder, which have a checkpoint of
`embeddings.transfer.SOURCE_REGIME` cached, and a report of the rest. Neither builder trains
anything: a source without a checkpoint is reported with the command that trains it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from embeddings.data import LoadLimits, TaskType, load_dataset
from embeddings.encoders import Encoder
from embeddings.options import ProgressFn, no_progress
from embeddings.taskemb import checkpoint_sha256
from embeddings.transfer import TransferOptions, source_checkpoint_path
from library.errors import LibraryError
from library.store import LibraryStore, SourceTask

TRAIN_HINT = "train them with `python bench/transfer_matrix.py --phase sources`"
ALL_TASK_TYPES = tuple(t.value for t in TaskType)
_LIMITS = LoadLimits(max_rows=10**7, max_text_chars=10**6)  # sources are read whole, as `library.build` does


@dataclass
class SourceBuildReport:
    """What a checkpoint-based build did per source (task names in each list)."""

    built: dict[str, dict[str, Any]] = field(default_factory=dict)  # task -> what was built, with timings
    kept: list[str] = field(default_factory=list)  # already built from this checkpoint
    missing_checkpoint: list[str] = field(default_factory=list)
    no_data: list[str] = field(default_factory=list)
    unsupported: list[str] = field(default_factory=list)  # task types this artefact is not built for


@dataclass(frozen=True)
class SourceCheckpoint:
    """A library source whose practitioner-regime checkpoint is cached."""

    task: SourceTask
    folder: Path
    path: Path
    sha256: str


def find_source_checkpoint(folder: Path, encoder: Encoder, checkpoint_dirs: Iterable[Path]) -> Path | None:
    """The practitioner-regime checkpoint of the task folder's source, in the first directory that has it."""
    source = load_dataset(folder, limits=_LIMITS)
    dev = load_dataset(folder, split="dev", limits=_LIMITS) if (folder / "dev.jsonl").is_file() else None
    for directory in checkpoint_dirs:
        path = source_checkpoint_path(source, encoder, TransferOptions(), Path(directory), dev)
        if path.is_file():
            return path
    return None


def scan_source_checkpoints(store: LibraryStore, data_dir: Path, encoder: Encoder, checkpoint_dirs: Iterable[Path],
                            report: SourceBuildReport, *, only: Iterable[str] | None = None,
                            task_types: Iterable[str] = ALL_TASK_TYPES,
                            on_progress: ProgressFn = no_progress) -> Iterator[SourceCheckpoint]:
    """Each wanted source with a cached checkpoint, in name order; the others go into `report`.

    `only` names sources; a name the library does not hold is an error (a typo should not build nothing).
    """
    dirs = [Path(d) for d in checkpoint_dirs]
    types = set(task_types)
    wanted = set(only) if only is not None else None
    tasks = [t for t in store.list_tasks() if wanted is None or t.name in wanted]
    if wanted is not None and len(tasks) != len(wanted):
        unknown = sorted(wanted - {t.name for t in tasks})
        raise LibraryError(f"no source task(s) {', '.join(unknown)} in the library")
    for done, task in enumerate(tasks):
        on_progress(done, len(tasks))
        if task.task_type not in types:
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
        yield SourceCheckpoint(task=task, folder=folder, path=path, sha256=checkpoint_sha256(path))
    on_progress(len(tasks), len(tasks))


def load_source(folder: Path, max_rows: int, seed: int) -> Any:
    """The source's training rows an artefact is computed on: a seeded subsample of the whole split."""
    return load_dataset(folder, split="train", limits=_LIMITS).subsample(max_rows, seed)
