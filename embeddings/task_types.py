"""The task-type registry: what each task type reads, how it is scored, and how it is shown.

`TaskType` (in `embeddings.data`) is the closed set; `TASK_TYPES` gives each its spec, so the API
schema, CLI choices, page labels and the headline metric come from one place. The per-type tensor
work (heads, losses, label sampling, tokenisation) stays with the code that does it
(`embeddings.heads`, `embeddings.features`), keyed by the same enum.
"""

from __future__ import annotations

from dataclasses import dataclass

from embeddings.data import TaskType


@dataclass(frozen=True)
class TaskTypeSpec:
    """`fields`: a row's fields in the JSONL schema; `labels`: what a row is labelled with."""

    name: TaskType
    label: str
    fields: tuple[str, ...]
    labels: str  # "class" | "score" | "tags" | "spans"
    main_metric: str
    head: str  # what `embeddings.heads.TaskHead` puts on the encoder


TASK_TYPES: dict[TaskType, TaskTypeSpec] = {s.name: s for s in (
    TaskTypeSpec(TaskType.CLASSIFICATION, "classification", ("text", "text_pair", "label"), "class", "accuracy",
                 "linear layer over the pooled sentence, cross-entropy"),
    TaskTypeSpec(TaskType.REGRESSION, "regression", ("text", "text_pair", "label"), "score", "spearman",
                 "linear layer over the pooled sentence to one value, mean squared error on standardised labels"),
    TaskTypeSpec(TaskType.QUESTION_ANSWERING, "question answering", ("question", "context", "answers"), "spans",
                 "f1", "start and end logits per token, cross-entropy over positions"),
    TaskTypeSpec(TaskType.SEQUENCE_LABELING, "sequence labeling", ("tokens", "tags"), "tags", "f1",
                 "linear layer per first sub-token, cross-entropy over tags"),
)}
TASK_TYPE_NAMES: tuple[str, ...] = tuple(t.value for t in TASK_TYPES)


def main_metric(task_type: TaskType | str, dataset_name: str = "") -> str:
    """The headline metric per task type (Matthews correlation for CoLA-like acceptability tasks)."""
    spec = TASK_TYPES[TaskType(task_type)]
    if spec.name == TaskType.CLASSIFICATION and "cola" in dataset_name.lower():
        return "matthews"
    return spec.main_metric
