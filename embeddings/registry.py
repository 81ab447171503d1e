"""The closed sets of `embeddings/`, defined once and cheap to import (no torch): the CLI, the API
schema and the pages build their choices from these.

* `EMBEDDING_METHODS`: how a dataset can be embedded (dispatched by `embeddings.api.embed_many`);
* `TRANSFER_METHODS`: how a transfer job can use its sources (`embeddings.transfer`, `embeddings.multisource`).

Task types are `embeddings.data.TaskType`, described by `embeddings.task_types.TASK_TYPES`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class EmbeddingMethod:
    """One way to embed a dataset; `map_caption` says what the task map of its vectors shows."""

    name: str
    label: str
    description: str
    passes: str  # methods with the same pass are computed together
    map_caption: str


EMBEDDING_METHODS: dict[str, EmbeddingMethod] = {m.name: m for m in (
    EmbeddingMethod("textemb", "TextEmb", "mean of the encoder's token embeddings", "text",
                    "PCA of the L2-normalised TextEmb vectors (mean-pooled token embeddings)"),
    EmbeddingMethod("semb", "SEmb", "mean of the rows' sentence embeddings", "text",
                    "PCA of the L2-normalised SEmb vectors (sentence embeddings)"),
    EmbeddingMethod("taskemb", "TaskEmb", "Fisher information of a briefly trained head", "taskemb",
                    "PCA of the TaskEmb vectors: the {n} Fisher components every task has, each L2-normalised, "
                    "concatenated"),
)}
METHODS: tuple[str, ...] = tuple(EMBEDDING_METHODS)


def in_pass(methods: Iterable[str], name: str) -> list[str]:
    """The methods among `methods` computed by the pass `name`."""
    return [m for m in methods if m in EMBEDDING_METHODS and EMBEDDING_METHODS[m].passes == name]



# The practitioner source regime's row caps (its optimiser settings are `embeddings.transfer.SOURCE_REGIME`).
SOURCE_MAX_ROWS = 10_000
SOURCE_DEV_MAX_ROWS = 1_000

ADAPTER_METHODS = ("scalearn", "scalearn_uniform", "scalearn_plus", "scalearn_uniform_plus", "adapterfusion", "pemt")
MULTI_SOURCE_METHODS = (*ADAPTER_METHODS, "camtl")
TRANSFER_METHODS: dict[str, str] = {
    "intermediate": "intermediate-task transfer", "scalearn": "ScaLearn", "scalearn_uniform": "ScaLearnUniform",
    "scalearn_plus": "ScaLearn++", "scalearn_uniform_plus": "ScaLearnUniform++", "adapterfusion": "AdapterFusion",
    "pemt": "PEMT", "camtl": "CA-MTL"}
