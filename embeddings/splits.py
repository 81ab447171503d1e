"""The dev split a transfer evaluates on when none is given: a deterministic 20% of the target held out.

One definition for every caller: the worker's transfer jobs, the API's check at submission (which has
only the stored record's row and label counts, so the arithmetic works on group sizes) and
`taskrank transfer` without `--dev`.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from embeddings.data import Dataset, TaskType

DEV_FRACTION = 0.2
API_HINT = "upload more, or give dev_dataset_id"


def held_out_count(group_sizes: Sequence[int], fraction: float = DEV_FRACTION) -> int:
    """How many rows `hold_out_dev` takes from groups of these sizes (a group of one keeps its row)."""
    return sum(round(fraction * n) if n > 1 else 0 for n in group_sizes)


def hold_out_error(group_sizes: Sequence[int], hint: str = API_HINT) -> str | None:
    """The message when no dev split can be held out of groups of these sizes, else None."""
    total = sum(group_sizes)
    held = held_out_count(group_sizes)
    if held == 0 or held == total:
        return f"the target has {total} rows: too few to hold out a dev split ({hint})"
    return None


def group_sizes(task_type: TaskType | str, rows: int, label_counts: dict[str, int] | None) -> list[int]:
    """Group sizes from a stored record: per label for classification, else all rows in one group."""
    if TaskType(task_type) == TaskType.CLASSIFICATION and label_counts:
        return [int(n) for n in label_counts.values()]
    return [rows]


def hold_out_dev(dataset: Dataset, seed: int, hint: str = API_HINT) -> tuple[Dataset, Dataset]:
    """(train, dev): `DEV_FRACTION` of the rows held out, per label for classification (so every dev label
    is seen in training), the same for the same seed. ValueError when the dataset is too small."""
    rng = random.Random(seed)
    groups: dict[Any, list[int]] = {}
    for i, example in enumerate(dataset.examples):
        key = getattr(example, "label", None) if dataset.task_type == TaskType.CLASSIFICATION else None
        groups.setdefault(key, []).append(i)
    error = hold_out_error([len(members) for members in groups.values()], hint)
    if error:
        raise ValueError(error)
    held: set[int] = set()
    for members in groups.values():
        held.update(rng.sample(members, round(DEV_FRACTION * len(members)) if len(members) > 1 else 0))
    kept = [e for i, e in enumerate(dataset.examples) if i not in held]
    train = Dataset(dataset.name, dataset.task_type, kept, list(dataset.labels), dataset.source)
    dev = Dataset(dataset.name, dataset.task_type, [dataset.examples[i] for i in sorted(held)],
                  list(dataset.labels), dataset.source)
    return train, dev
