"""Stage 1 of the multi-source methods: one bottleneck adapter per task, trained on the frozen encoder.

Adapters come from AdapterHub's `adapters` library (Poth et al. 2023), the maintained successor of
adapter-transformers on which AdapterFusion and ScaLearn were built: `SeqBnConfig` is the
sequential bottleneck adapter of Pfeiffer et al. (after the feed-forward block of every layer,
down-projection by `reduction_factor`, ReLU, up-projection, residual), and its `Fuse` composition
is what stage 2 (embeddings/fusion.py) combines the frozen adapters with.

A source's adapter is cached like a fine-tuned source encoder (embeddings/transfer.py): under the
checkpoint directory, keyed by source data hash, model weights hash, adapter options, row cap and
data seed, as safetensors beside a JSON sidecar, written atomically; every target reuses it. A
target's own adapter (ScaLearn and AdapterFusion combine it with the sources') is cached the same
way, its key also naming the dev data and the seed, since the best dev evaluation is kept.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from embeddings.data import Dataset
from embeddings.encoders import Encoder
from embeddings.finetune import FinetuneOptions, FinetuneResult, fine_tune
from embeddings.options import ProgressFn, library_versions, no_progress

STORED_NAME = "adapter"  # adapters are stored under this name and renamed when loaded beside others


@dataclass(frozen=True)
class AdapterOptions:
    """A Pfeiffer-style bottleneck adapter (adapters' SeqBnConfig) and how it is trained."""

    reduction_factor: int = field(default=16, metadata={"help": "Hidden size / bottleneck size."})
    non_linearity: str = field(default="relu", metadata={"help": "Activation inside the bottleneck."})
    train: FinetuneOptions = field(
        default_factory=lambda: FinetuneOptions(epochs=2.0, learning_rate=5e-4),
        metadata={"help": "Training of the adapter and its head (the encoder stays frozen)."})

    def __post_init__(self) -> None:
        if self.reduction_factor < 1:
            raise ValueError("reduction_factor must be >= 1")
        if self.non_linearity not in ("relu", "gelu", "tanh", "swish"):
            raise ValueError(f"unknown non_linearity {self.non_linearity!r}")

    def config(self) -> Any:
        from adapters import SeqBnConfig

        return SeqBnConfig(reduction_factor=self.reduction_factor, non_linearity=self.non_linearity)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class StoredAdapter:
    """An adapter's weights (under STORED_NAME) and where they came from."""

    state: dict[str, torch.Tensor]
    path: Path
    reused: bool
    seconds: float  # training time; 0 when it came from the cache
    result: dict[str, Any] | None = None  # the dev evaluation, for adapters trained with a dev set


def adapters_version() -> str:
    import adapters

    return str(adapters.__version__)


@contextmanager
def quiet_adapters() -> Iterator[None]:
    """Mute the library's "adapters available but none are activated" warning, which it logs from
    inside `set_active_adapters` itself (the activation under way is exactly what fixes that)."""
    logger = logging.getLogger("adapters.model_mixin")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def with_adapters(encoder: Encoder, names: list[str], options: AdapterOptions) -> nn.Module:
    """A copy of the encoder's model with AdapterHub support and fresh adapters `names`; everything frozen.

    The shared encoder is never touched: `adapters.init` patches the copy only.
    """
    import adapters

    body: Any = copy.deepcopy(encoder.model)  # adapters.init adds AdapterHub's (untyped) methods
    adapters.init(body)
    for name in names:
        if not name or any(c in name for c in ".,"):
            raise ValueError(f"adapter names may not contain '.' or ',': {name!r}")
        body.add_adapter(name, config=options.config())
    body.freeze_model(True)
    return body


def adapter_state(body: nn.Module, name: str) -> dict[str, torch.Tensor]:
    """The weights of adapter `name`, renamed to STORED_NAME, on the CPU."""
    marker = f".adapters.{name}."
    state = {key.replace(marker, f".adapters.{STORED_NAME}."): value.detach().to("cpu").contiguous()
             for key, value in body.state_dict().items() if marker in key}
    if not state:
        raise ValueError(f"the model has no adapter {name!r}")
    return state


def load_adapter_state(body: nn.Module, name: str, state: dict[str, torch.Tensor]) -> None:
    """Load stored weights into adapter `name` of `body`; every one of its tensors must be given."""
    own = {key for key in body.state_dict() if f".adapters.{name}." in key}
    renamed = {key.replace(f".adapters.{STORED_NAME}.", f".adapters.{name}."): value for key, value in state.items()}
    if set(renamed) != own:
        missing, extra = sorted(own - set(renamed)), sorted(set(renamed) - own)
        raise ValueError(f"stored adapter does not fit adapter {name!r}: missing {missing[:3]}, unexpected {extra[:3]}")
    body.load_state_dict(renamed, strict=False)


def train_adapter(train: Dataset, dev: Dataset | None, encoder: Encoder, options: AdapterOptions, *,
                  checkpoint_dir: str | Path | None = None, on_progress: ProgressFn = no_progress
                  ) -> tuple[FinetuneResult, dict[str, torch.Tensor]]:
    """Train one adapter and a head on `train` with the encoder frozen; returns (result, adapter weights)."""

    def build() -> nn.Module:
        body: Any = with_adapters(encoder, [STORED_NAME], options)  # an AdapterHub model
        with quiet_adapters():
            body.train_adapter(STORED_NAME)  # unfreezes this adapter only and makes it active
        return body

    result, model = fine_tune(train, dev, encoder, options.train, body=build, checkpoint_dir=checkpoint_dir,
                              on_progress=on_progress)
    return result, adapter_state(model.encoder, STORED_NAME)


def adapter_key(dataset: Dataset, encoder: Encoder, options: AdapterOptions, max_rows: int, data_seed: int,
                dev: Dataset | None = None) -> str:
    identity = [dataset.content_hash, dev.content_hash if dev is not None else None, encoder.name,
                encoder.weights_hash, options.to_dict(), max_rows, data_seed, adapters_version()]
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _cached(path: Path, device: torch.device) -> StoredAdapter | None:
    meta_path = path.with_suffix(".json")
    if not (path.is_file() and meta_path.is_file()):
        return None
    meta = json.loads(meta_path.read_text())
    return StoredAdapter(state=load_file(path, device=str(device)), path=path, reused=True, seconds=0.0,
                         result=meta.get("result"))


def _store(path: Path, state: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Weights then sidecar, each written to a temporary name and renamed (the sidecar marks completion)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.cpu() for k, v in state.items()}, str(tmp), metadata={"task": str(meta.get("task"))})
    os.replace(tmp, path)
    meta_path = path.with_suffix(".json")
    meta_tmp = meta_path.with_name(meta_path.name + ".tmp")
    meta_tmp.write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
    os.replace(meta_tmp, meta_path)


def _metadata(dataset: Dataset, encoder: Encoder, options: AdapterOptions, rows: int,
              result: FinetuneResult | None, seconds: float, dev: Dataset | None) -> dict[str, Any]:
    return {"task": dataset.name, "task_type": dataset.task_type.value, "data_hash": dataset.content_hash,
            "dev_hash": dev.content_hash if dev is not None else None, "rows": rows, "model_name": encoder.name,
            "model_hash": encoder.weights_hash, "options": options.to_dict(), "seconds": seconds,
            "result": result.to_dict() if result is not None else None,
            "versions": {**library_versions(), "adapters": adapters_version()}}


def source_adapter(source: Dataset, encoder: Encoder, options: AdapterOptions, cache_dir: str | Path, *,
                   max_rows: int, data_seed: int, on_progress: ProgressFn = no_progress) -> StoredAdapter:
    """The adapter trained on `source` (its head dropped): from the cache, or trained and stored."""
    path = Path(cache_dir) / f"adapter-{adapter_key(source, encoder, options, max_rows, data_seed)}.safetensors"
    found = _cached(path, encoder.device)
    if found is not None:
        on_progress(1, 1)
        return found
    started = time.perf_counter()
    sample = source.subsample(max_rows, data_seed)
    _, state = train_adapter(sample, None, encoder, options, checkpoint_dir=path.with_suffix(".run"),
                             on_progress=on_progress)
    seconds = time.perf_counter() - started
    _store(path, state, _metadata(sample, encoder, options, len(sample), None, seconds, None))
    return StoredAdapter(state=state, path=path, reused=False, seconds=seconds)


def target_adapter(train: Dataset, dev: Dataset, encoder: Encoder, options: AdapterOptions,
                   cache_dir: str | Path, *, seed: int, on_progress: ProgressFn = no_progress) -> StoredAdapter:
    """The target's own adapter for one seed (the best dev evaluation kept): cached like a source's.

    Its dev result is the "single adapter" score of the target.
    """
    options = replace(options, train=replace(options.train, seed=seed))
    key = adapter_key(train, encoder, options, len(train), seed, dev=dev)
    path = Path(cache_dir) / f"adapter-{key}.safetensors"
    found = _cached(path, encoder.device)
    if found is not None:
        on_progress(1, 1)
        return found
    started = time.perf_counter()
    result, state = train_adapter(train, dev, encoder, options, checkpoint_dir=path.with_suffix(".run"),
                                  on_progress=on_progress)
    seconds = time.perf_counter() - started
    _store(path, state, _metadata(train, encoder, options, len(train), result, seconds, dev))
    return StoredAdapter(state=state, path=path, reused=False, seconds=seconds, result=result.to_dict())
