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
    # A library-side variant: the sources' vectors are computed from something a target does not have
    # (its fine-tuned checkpoint), so a target is embedded with `target_method` and searched against
    # this method's library vectors. Such a method is not in `METHODS` (a dataset alone cannot give it).
    target_method: str | None = None


EMBEDDING_METHODS: dict[str, EmbeddingMethod] = {m.name: m for m in (
    EmbeddingMethod("textemb", "TextEmb", "mean of the encoder's token embeddings", "text",
                    "PCA of the L2-normalised TextEmb vectors (mean-pooled token embeddings)"),
    EmbeddingMethod("semb", "SEmb", "mean of the rows' sentence embeddings", "text",
                    "PCA of the L2-normalised SEmb vectors (sentence embeddings)"),
    EmbeddingMethod("taskemb", "TaskEmb", "Fisher information of a briefly trained head", "taskemb",
                    "PCA of the TaskEmb vectors: the {n} Fisher components every task has, each L2-normalised, "
                    "concatenated"),
    EmbeddingMethod("taskemb_ft", "TaskEmb (fine-tuned sources)",
                    "Fisher information of each source's fine-tuned encoder (its practitioner-regime checkpoint) "
                    "with a head fitted on its frozen states", "checkpoint",
                    "PCA of the sources' checkpoint-based TaskEmb vectors: the {n} Fisher components, each "
                    "L2-normalised, concatenated (the target is its briefly trained TaskEmb)",
                    target_method="taskemb"),
)}
# The methods a dataset can be embedded with on its own (the CLI's `embed`, the library's build options).
METHODS: tuple[str, ...] = tuple(m.name for m in EMBEDDING_METHODS.values() if m.target_method is None)


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
