"""Options of the embedding methods: frozen dataclasses, validated on creation, saved beside every vector."""

from __future__ import annotations

import platform
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from embeddings.features import TokenizeOptions

ProgressFn = Callable[[int, int], None]
"""`on_progress(done, total)`: the one progress mechanism; the CLI shows a bar, the worker a job record."""


def no_progress(done: int, total: int) -> None:
    """Default callback."""


@dataclass(frozen=True)
class EmbedOptions(TokenizeOptions):
    max_tokens_per_batch: int = field(
        default=4096, metadata={"help": "Padded tokens per batch; 4096 keeps a CPU cache-friendly, raise it on GPU."})
    max_batch_size: int = field(default=512, metadata={"help": "Upper bound on rows per batch."})
    pad_to: int | None = field(default=None, metadata={"help": "Pad every batch to this length (naive baseline only)."})
    fixed_batch_size: int | None = field(
        default=None, metadata={"help": "Fixed-size batches in data order (naive baseline only)."})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_tokens_per_batch < self.qa_max_length:
            raise ValueError("max_tokens_per_batch must hold at least one QA window")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class TaskEmbOptions(EmbedOptions):
    """Options of TaskEmb (Vu et al. 2020), with names from the original code where there was one."""

    label_source: Literal["data", "sample"] = field(
        default="data", metadata={"help": "Gold labels, or labels sampled from the model's predictive distribution."})
    train_scope: Literal["head", "full"] = field(
        default="head", metadata={"help": "Train only the task head, or the whole model, before accumulating."})
    train_steps: int = field(default=100, metadata={"help": "Optimiser steps before the Fisher is accumulated."})
    train_batch_size: int = field(default=32, metadata={"help": "Rows per training step."})
    learning_rate: float | None = field(
        default=None, metadata={"help": "Default 1e-3 for the head only, 3e-5 for the full model."})
    fisher: Literal["per_example", "batch"] = field(
        default="per_example",
        metadata={"help": "Square each example's gradient (improvement) or the batch-summed gradient (original)."})
    components: tuple[str, ...] = field(
        default=("cls_output", "attention_output", "output"),
        metadata={"help": "Output components: cls_output, attention_output (per layer), output (per layer)."})
    include_parameters: bool = field(
        default=False, metadata={"help": "Also the Fisher of the encoder parameters, one component per layer."})
    seed: int = field(default=13, metadata={"help": "Seeds head initialisation, batch order and label sampling."})

    def __post_init__(self) -> None:
        super().__post_init__()
        unknown = set(self.components) - {"cls_output", "attention_output", "output"}
        if unknown:
            raise ValueError(f"unknown TaskEmb components {sorted(unknown)}")
        if not self.components and not self.include_parameters:
            raise ValueError("TaskEmb needs at least one component")
        if self.train_steps < 0 or self.train_batch_size < 1:
            raise ValueError("train_steps must be >= 0 and train_batch_size >= 1")

    @property
    def lr(self) -> float:
        if self.learning_rate is not None:
            return self.learning_rate
        return 1e-3 if self.train_scope == "head" else 3e-5


def library_versions() -> dict[str, str]:
    import numpy
    import torch
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "numpy": numpy.__version__}
