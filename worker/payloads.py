"""The app-to-worker contract: one pydantic payload per job kind, validated on both sides.

Routes build a payload and store `payload.model_dump()` as the job's params; the runner reads them
back with `model_validate`, so a job that a route could write, the worker can read, and a malformed
one fails with a message naming the field instead of a KeyError deep in a job. `TransferRunOptions`
converts to the training options dataclasses in one place.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from embeddings.registry import MULTI_SOURCE_METHODS, TRANSFER_METHODS
from embeddings.transfer import SOURCE_MAX_ROWS, SOURCE_REGIME

Role = Literal["baseline", "source", "combined"]


class TransferRunOptions(BaseModel):
    """The knobs of a transfer run: a subset of FinetuneOptions, with defaults small enough for a CPU."""

    model_config = ConfigDict(extra="forbid")
    epochs: float = Field(1.0, gt=0, le=20, description="Passes over the target's training rows.")
    source_epochs: float | None = Field(
        None, gt=0, le=20, description="Passes over a source's rows. Default: the practitioner regime the shipped "
                                       "transfer matrix was measured with (2 epochs, early-stopped on the source's "
                                       "dev split, batch 32, at most 10,000 rows), so a cached checkpoint is reused.")
    learning_rate: float = Field(5e-5, gt=0, le=0.01, description="Peak AdamW learning rate.")
    batch_size: int = Field(16, ge=1, le=256, description="Rows per optimiser step.")
    max_length: int = Field(128, ge=8, le=512, description="Truncation length in tokens.")
    source_max_rows: int = Field(SOURCE_MAX_ROWS, ge=2, le=200_000,
                                 description="A source is subsampled to this many rows.")
    target_max_rows: int = Field(1000, ge=2, le=200_000, description="The target's training rows are capped here.")
    dev_max_rows: int = Field(1000, ge=1, le=200_000, description="Dev rows evaluated (subsampled beyond this).")
    data_seed: int = Field(13, ge=0, le=2**31 - 1, description="Seeds the dev hold-out and the subsamples.")
    # multi-source methods only (ignored by "intermediate")
    adapter_learning_rate: float = Field(5e-4, gt=0, le=0.1,
                                         description="Stage-1 adapters (sources and the target's own).")
    combination_learning_rate: float | None = Field(
        None, gt=0, le=0.1, description="What stage 2 trains (ScaLearn scales, fusion, PEMT gates and target "
                                        "adapter, CA-MTL's conditional modules); default per method.")
    freeze_encoder_layers: int | None = Field(None, ge=0, le=96,
                                              description="CA-MTL: frozen lower layers (default: half).")
    task_sampling: Literal["uncertainty", "uniform", "sequential"] = Field(
        "uncertainty", description="CA-MTL: which task each step trains on.")

    def target_finetune(self) -> Any:  # -> embeddings.finetune.FinetuneOptions
        from embeddings.finetune import FinetuneOptions

        return FinetuneOptions(epochs=self.epochs, learning_rate=self.learning_rate, batch_size=self.batch_size,
                               max_length=self.max_length)

    @property
    def practitioner_sources(self) -> bool:
        """No source epochs given: sources train in `SOURCE_REGIME` (early-stopped on their dev split)."""
        return self.source_epochs is None

    def transfer(self, seeds: list[int]) -> Any:  # -> embeddings.transfer.TransferOptions
        """Intermediate-task transfer: the target as asked, the sources in the practitioner regime unless
        `source_epochs` asks for the target's settings with other epochs."""
        from embeddings.transfer import TransferOptions

        target = self.target_finetune()
        source = SOURCE_REGIME if self.source_epochs is None else replace(target, epochs=self.source_epochs)
        return TransferOptions(target=target, source=source, seeds=tuple(seeds),
                               source_max_rows=self.source_max_rows, target_max_rows=self.target_max_rows,
                               data_seed=self.data_seed)

    def multi_source(self, method: str, seeds: list[int]) -> Any:  # -> embeddings.multisource.MultiSourceOptions
        from embeddings.camtl import CamtlOptions
        from embeddings.multisource import MultiSourceOptions
        from embeddings.source_adapters import AdapterOptions

        target = self.target_finetune()
        adapter_train = replace(target, epochs=self.source_epochs or self.epochs,  # stage-1 adapters: as the target
                                learning_rate=self.adapter_learning_rate)
        return MultiSourceOptions(
            method=method, target=target, combination_learning_rate=self.combination_learning_rate,
            adapter=AdapterOptions(train=adapter_train), seeds=tuple(seeds),
            source_max_rows=self.source_max_rows, target_max_rows=self.target_max_rows, data_seed=self.data_seed,
            camtl=CamtlOptions(freeze_encoder_layers=self.freeze_encoder_layers, sampling=self.task_sampling))


class RankPayload(BaseModel):
    model_config = ConfigDict(extra="forbid")
    method: str
    top_k: int = Field(ge=1)
    all_class: bool = False
    ranking_id: str | None = None
    default_note: str | None = None  # why a request without a method got this one (`library.ranker.default_for`)


class AddSourcePayload(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1)
    description: str = ""


class RankerFitPayload(BaseModel):
    """Refit the learned ranker (`library.ranker.fit_ranker`): after enough new transfer results, or by hand."""

    model_config = ConfigDict(extra="forbid")
    reason: str = ""


class SourceRef(BaseModel):
    """Where a source's data is: an operator's task folder (`source_path`) or an upload."""

    model_config = ConfigDict(extra="forbid")
    key: str
    name: str
    source_path: str | None = None
    source_dataset_id: str | None = None
    score: float | None = None


class TransferPayload(BaseModel):
    """One job of a transfer batch: the baseline, one source then the target, or all sources combined."""

    model_config = ConfigDict(extra="forbid")
    role: Role
    seeds: list[int] = Field(min_length=1)
    batch_id: str | None = None  # set when the batch is stored
    source: str | None = None
    source_name: str | None = None
    source_kind: Literal["library", "dataset"] | None = None
    source_path: str | None = None
    source_dataset_id: str | None = None
    method: str | None = None
    sources: list[SourceRef] = Field(default_factory=list)

    def model_post_init(self, _: Any) -> None:
        if self.role == "source" and not (self.source and (self.source_path or self.source_dataset_id)):
            raise ValueError("a source job needs `source` and `source_path` or `source_dataset_id`")
        if self.role == "combined" and (self.method not in MULTI_SOURCE_METHODS or not self.sources):
            raise ValueError(f"a combined job needs a multi-source method ({', '.join(MULTI_SOURCE_METHODS)}) "
                             "and its sources")


assert set(TRANSFER_METHODS) >= set(MULTI_SOURCE_METHODS)
