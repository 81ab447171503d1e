"""TaskEmb (Vu et al. 2020): the diagonal empirical Fisher of the task loss, pooled over the dataset.

A head is trained briefly (optionally the whole model), then every example's loss is
back-propagated and the squared gradients with respect to the encoder's outputs (the first-token
output, each layer's attention output and layer output) are accumulated, and optionally those
with respect to the encoder parameters. Gradients are read by tensor hooks during the backward
pass and folded into per-component accumulators, so memory is flat in the number of rows.

`fisher_embedding_from_checkpoint` is the same Fisher read from an encoder fine-tuned on the task
(Vu et al. 2020 compute TaskEmb from a model fine-tuned on the task): the cached source checkpoint
is loaded into a copy of the base encoder, the head is fitted on its frozen states, and the
components are accumulated exactly as above, so the vectors have the same layout.
"""

from __future__ import annotations

import copy
import hashlib
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from torch import nn

from embeddings.data import Dataset, TaskType
from embeddings.encoders import Encoder
from embeddings.features import Batch, Features, collate, length_sorted_batches, tokenize
from embeddings.heads import TaskHead
from embeddings.options import ProgressFn, TaskEmbOptions, library_versions, no_progress
from embeddings.result import EmbeddingResult
from embeddings.textemb import plan_batches

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def fisher_normalise(grad: torch.Tensor, mask: torch.Tensor, per_example: bool) -> torch.Tensor:
    """The one normalisation of an output gradient (B, T, H), shared by every task type.

    As in the original: token-sum under the mask, square, divide by the token count. Per example
    (the default) squares each example's own gradient; the original squares the batch sum.
    Returns the (H,) contribution of this batch.
    """
    grad = grad.float() * mask
    if per_example:
        summed = grad.sum(dim=1)  # (B, H)
        return (summed.pow(2) / mask.sum(dim=1).clamp(min=1.0)).sum(dim=0)
    return grad.sum(dim=(0, 1)).pow(2) / mask.sum().clamp(min=1.0)


def fisher_first_token(grad: torch.Tensor, per_example: bool) -> torch.Tensor:
    first = grad[:, 0].float()
    return first.pow(2).sum(dim=0) if per_example else first.sum(dim=0).pow(2)


def layer_output_modules(model: nn.Module) -> list[tuple[nn.Module, nn.Module]]:
    """(attention output, layer output) modules of each layer, for the BERT and DistilBERT families."""
    encoder = getattr(model, "encoder", None)
    if encoder is not None and hasattr(encoder, "layer"):
        return [(layer.attention.output, layer.output) for layer in encoder.layer]
    transformer = getattr(model, "transformer", None)
    if transformer is not None and hasattr(transformer, "layer"):
        return [(layer.sa_layer_norm, layer.output_layer_norm) for layer in transformer.layer]
    raise ValueError(f"TaskEmb does not know the layer structure of {type(model).__name__}; "
                     "supported: BERT, RoBERTa, ELECTRA, XLM-R, DeBERTa, DistilBERT families")


@dataclass
class _Accumulator:
    """Per-component sums living on the device; the current batch's mask is set before each backward."""

    per_example: bool
    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    mask: torch.Tensor | None = None

    def add(self, name: str, value: torch.Tensor) -> None:
        if name in self.sums:
            self.sums[name] += value
        else:
            self.sums[name] = value.detach().clone()

    def output_hook(self, name: str) -> Callable[[torch.Tensor], None]:
        def hook(grad: torch.Tensor) -> None:
            assert self.mask is not None
            self.add(name, fisher_normalise(grad, self.mask, self.per_example))
        return hook

    def cls_hook(self, grad: torch.Tensor) -> None:
        self.add("cls_output", fisher_first_token(grad, self.per_example))


@contextmanager
def _requires_grad(module: nn.Module, flag: bool) -> Iterator[None]:
    saved = [p.requires_grad for p in module.parameters()]
    for p in module.parameters():
        p.requires_grad_(flag)
    try:
        yield
    finally:
        for p, s in zip(module.parameters(), saved, strict=True):
            p.requires_grad_(s)


def fisher_embedding(dataset: Dataset, encoder: Encoder, options: TaskEmbOptions | None = None,
                     on_progress: ProgressFn = no_progress) -> EmbeddingResult:
    """TaskEmb of a dataset: one vector per Fisher component."""
    options = options or TaskEmbOptions()
    started = time.perf_counter()
    features = tokenize(dataset, encoder.tokenizer, options)
    if len(features) == 0:
        raise ValueError(f"dataset {dataset.name!r} has no rows to embed")
    if dataset.task_type == TaskType.REGRESSION:
        features.labels = _standardise(features.labels)  # type: ignore[arg-type]
    if dataset.task_type == TaskType.SEQUENCE_LABELING and "cls_output" in options.components:
        # The first token carries no tag, so its final-layer gradient is identically zero: drop it.
        options = replace(options, components=tuple(c for c in options.components if c != "cls_output"))
    device = encoder.device
    torch.manual_seed(options.seed)
    model = copy.deepcopy(encoder.model) if options.train_scope == "full" else encoder.model
    head = TaskHead(dataset.task_type, encoder.hidden_size, features.num_labels).to(device)
    train_examples = options.train_steps * options.train_batch_size
    total = train_examples + len(features)
    on_progress(0, total)

    def training_progress(done: int) -> None:
        on_progress(done, total)

    _train(model, head, features, encoder, options, training_progress)
    sums, divisor = _accumulate(model, head, features, encoder, options,
                                lambda done: on_progress(train_examples + done, total))
    vectors = {name: (value / divisor).float().cpu().numpy() for name, value in sums.items()}
    return EmbeddingResult(
        method="taskemb", vectors=_ordered(vectors), model_name=encoder.name, model_hash=encoder.weights_hash,
        dataset_name=dataset.name, dataset_hash=dataset.content_hash, task_type=dataset.task_type.value,
        num_examples=len(dataset), num_features=len(features), num_tokens=features.num_tokens,
        options={**options.to_dict(), "components": list(options.components)}, versions=library_versions(),
        seconds=time.perf_counter() - started)


FINETUNED_METHOD = "taskemb_ft"


def checkpoint_sha256(path: str | Path) -> str:
    """The checkpoint file's sha256 (first 16 hex digits): which fine-tuned weights a vector came from."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def fisher_embedding_from_checkpoint(dataset: Dataset, encoder: Encoder, checkpoint: str | Path,
                                     options: TaskEmbOptions | None = None,
                                     on_progress: ProgressFn = no_progress) -> EmbeddingResult:
    """TaskEmb of a dataset read from the encoder fine-tuned on it (`taskemb_ft`).

    `checkpoint`: an encoder body's safetensors (head dropped), as `embeddings.transfer` caches a
    source's practitioner-regime training, with its `.json` sidecar beside it when there is one.
    The fine-tuned weights are loaded into a copy of `encoder.model` (the shared encoder is never
    modified); the head is then fitted on the frozen fine-tuned states (`train_scope` must be
    "head": the encoder is already trained on the task, and the head the checkpoint dropped is
    refitted cheaply) and the Fisher accumulated as in `fisher_embedding`. The result keeps the
    base encoder's name and weights hash (the library key), method `taskemb_ft`, and records the
    checkpoint (file name, sha256, the regime it was trained with) in its options.
    """
    from safetensors.torch import load_file

    from embeddings.transfer import source_checkpoint_info

    options = options or TaskEmbOptions()
    if options.train_scope != "head":
        raise ValueError("a checkpoint-based TaskEmb fits only the head on the fine-tuned encoder (train_scope='head')")
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"no fine-tuned checkpoint at {path}")
    started = time.perf_counter()
    base_hash = encoder.weights_hash
    model = copy.deepcopy(encoder.model)
    model.load_state_dict(load_file(str(path), device=str(encoder.device)), strict=True)
    model.eval()
    tuned = replace(encoder, model=model, _hash=None)
    result = fisher_embedding(dataset, tuned, options, on_progress)
    info = source_checkpoint_info(path)
    provenance: dict[str, Any] = {
        "encoder_state": "source_checkpoint", "checkpoint": path.name, "checkpoint_sha256": checkpoint_sha256(path),
        "finetuned_weights_hash": tuned.weights_hash,
        "source_regime": info.get("options"), "source_rows": info.get("rows"),
        "source_dev_score": info.get("dev_score"), "source_best_step": info.get("best_step"),
    }
    return replace(result, method=FINETUNED_METHOD, model_hash=base_hash,
                   options={**result.options, **provenance}, seconds=time.perf_counter() - started)


def _standardise(labels: np.ndarray) -> np.ndarray:
    std = float(labels.std()) or 1.0
    return ((labels - labels.mean()) / std).astype(np.float32)


def _train(model: nn.Module, head: TaskHead, features: Features, encoder: Encoder, options: TaskEmbOptions,
           on_step: Callable[[int], None]) -> None:
    """Fit the head (or the whole model) briefly, so the Fisher reflects the task and not a random head."""
    if options.train_steps == 0:
        return
    rng = np.random.default_rng(options.seed)
    if options.train_scope == "head":
        _train_head_on_cached_states(head, features, encoder, options, rng, on_step)
        return
    optimiser = torch.optim.AdamW(list(head.parameters()) + list(model.parameters()), lr=options.lr)
    head.train()
    model.train()
    for step, index in enumerate(_training_batches(len(features), options, rng)):
        batch = collate(features, index, encoder.device)
        assert batch.labels is not None
        with encoder.autocast():
            logits = head(model(**batch.model_inputs()).last_hidden_state, batch.attention_mask)
        loss = head.per_example_loss(logits, batch.labels).mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        on_step((step + 1) * options.train_batch_size)
    model.eval()
    head.eval()


def _training_batches(count: int, options: TaskEmbOptions, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """`train_steps` batches drawn epoch by epoch from a seeded permutation."""
    order, position = rng.permutation(count), 0
    for _ in range(options.train_steps):
        if position + options.train_batch_size > count and position > 0:
            order, position = rng.permutation(count), 0
        index = order[position : position + options.train_batch_size]
        position += len(index)
        yield index


_CACHED_TOKENS = 262_144  # final-layer states kept for head training (about 200 MB at 384 dims in fp16)


def _train_head_on_cached_states(head: TaskHead, features: Features, encoder: Encoder, options: TaskEmbOptions,
                                 rng: np.random.Generator, on_step: Callable[[int], None]) -> None:
    """With a frozen encoder, encode the training rows once and fit the head on the stored states.

    One forward pass over at most steps x batch rows (fewer when the token cache is full) instead
    of one per step: head training costs about as much as a TextEmb pass over those rows.
    """
    sentence_level = head.task_type in (TaskType.CLASSIFICATION, TaskType.REGRESSION)
    wanted = rng.permutation(len(features))[: options.train_steps * options.train_batch_size]
    if sentence_level:  # one stored vector per row
        subset = wanted
    else:  # whole token sequences: cap the stored tokens
        subset = wanted[: max(1, int(np.searchsorted(np.cumsum(features.lengths[wanted]), _CACHED_TOKENS, "right")))]
    store_dtype = torch.float16 if encoder.device.type == "cpu" else torch.bfloat16
    states: list[torch.Tensor] = [torch.empty(0)] * len(subset)
    position = {int(f): i for i, f in enumerate(subset)}
    with torch.inference_mode():
        for index in _plan_subset(features, subset, options):
            batch = collate(features, index, encoder.device, with_labels=False)
            with encoder.autocast():
                hidden = encoder.model(**batch.model_inputs()).last_hidden_state
            for row, f in enumerate(index):
                kept = hidden[row, :1] if sentence_level else hidden[row, : len(features.input_ids[f])]
                states[position[int(f)]] = kept.to(store_dtype)
    half = options.train_steps * options.train_batch_size // 2
    on_step(half)
    optimiser = torch.optim.AdamW(head.parameters(), lr=options.lr, weight_decay=0.0)
    head.train()
    for step, local in enumerate(_training_batches(len(subset), options, rng)):
        index = subset[local]
        labels = collate(features, index, encoder.device).labels
        assert labels is not None
        width = labels.shape[1] if labels.dim() == 2 and head.task_type == TaskType.SEQUENCE_LABELING else None
        padded, mask = _pad_states([states[i] for i in local], width)
        logits = head(padded.float(), mask)
        loss = head.per_example_loss(logits, labels).mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        if (step + 1) % 10 == 0:
            on_step(half + (step + 1) * options.train_batch_size // 2)
    on_step(options.train_steps * options.train_batch_size)
    head.eval()


def _plan_subset(features: Features, subset: np.ndarray, options: TaskEmbOptions) -> list[np.ndarray]:
    return [subset[b] for b in length_sorted_batches(features.lengths[subset], options.max_tokens_per_batch,
                                                       options.max_batch_size)]


def _pad_states(states: list[torch.Tensor], width: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    longest = width or max(s.shape[0] for s in states)
    out = states[0].new_zeros((len(states), longest, states[0].shape[-1]))
    mask = torch.zeros((len(states), longest), dtype=torch.long, device=states[0].device)
    for row, s in enumerate(states):
        out[row, : s.shape[0]] = s
        mask[row, : s.shape[0]] = 1
    return out, mask


def _accumulate(model: nn.Module, head: TaskHead, features: Features, encoder: Encoder, options: TaskEmbOptions,
                on_done: Callable[[int], None]) -> tuple[dict[str, torch.Tensor], int]:
    per_example = options.fisher == "per_example"
    acc = _Accumulator(per_example=per_example)
    generator = torch.Generator().manual_seed(options.seed)
    if options.include_parameters and per_example:
        batches = [np.array([i]) for i in range(len(features))]  # per-example parameter gradients need B = 1
    else:
        batches = plan_batches(features, options)
    handles = []
    if not options.include_parameters:  # only activation gradients are needed: skip every weight gradient
        handles.append(cast("PreTrainedModel", model).get_input_embeddings().register_forward_hook(
            lambda _m, _i, out: out.requires_grad_(True)))
    for i, (attention, output) in enumerate(layer_output_modules(model)):
        for kind, module in (("attention_output", attention), ("output", output)):
            if kind in options.components:
                hook = acc.output_hook(f"layer_{i}.{kind}")
                handles.append(module.register_forward_hook(lambda _m, _i, out, h=hook: _on_output(out, h)))
    layer_params = _layer_parameters(model) if options.include_parameters else []
    model.eval()
    head.eval()
    done = 0
    try:
        with _requires_grad(model, options.include_parameters), _requires_grad(head, False):
            for index in batches:
                batch = collate(features, index, encoder.device, pad_to=options.pad_to)
                acc.mask = batch.attention_mask.unsqueeze(-1).float()
                _backward_one(model, head, batch, encoder, options, acc, generator)
                for name, params in layer_params:
                    acc.add(name, torch.cat([p.grad.float().pow(2).flatten() for p in params if p.grad is not None]))
                    for p in params:
                        p.grad = None
                done += len(index)
                on_done(done)
    finally:
        for handle in handles:
            handle.remove()
    divisor = len(features) if per_example else len(batches)
    return acc.sums, divisor


def _on_output(out: torch.Tensor | tuple, hook: Callable[[torch.Tensor], None]) -> None:
    tensor = out[0] if isinstance(out, tuple) else out
    if tensor.requires_grad:
        tensor.register_hook(hook)


def _backward_one(model: nn.Module, head: TaskHead, batch: Batch, encoder: Encoder, options: TaskEmbOptions,
                  acc: _Accumulator, generator: torch.Generator) -> None:
    with encoder.autocast():
        states = model(**batch.model_inputs()).last_hidden_state
        if "cls_output" in options.components:
            states.register_hook(acc.cls_hook)
        logits = head(states, batch.attention_mask)
    assert batch.labels is not None
    labels = batch.labels if options.label_source == "data" else head.sample_labels(logits, batch.labels, generator)
    losses = head.per_example_loss(logits, labels)
    # Summed loss: each example's output gradient is its own; the mean is the original's batch Fisher.
    (losses.sum() if options.fisher == "per_example" else losses.mean()).backward()


def _layer_parameters(model: nn.Module) -> list[tuple[str, list[nn.Parameter]]]:
    groups = []
    for i, (attention, output) in enumerate(layer_output_modules(model)):
        layer = _common_parent(model, attention, output)
        groups.append((f"layer_{i}.parameters", list(layer.parameters())))
    return groups


def _common_parent(model: nn.Module, a: nn.Module, b: nn.Module) -> nn.Module:
    names = {module: name for name, module in model.named_modules()}
    prefix_a, prefix_b = names[a].split("."), names[b].split(".")
    common = []
    for x, y in zip(prefix_a, prefix_b, strict=False):
        if x != y:
            break
        common.append(x)
    return model.get_submodule(".".join(common))


def _ordered(vectors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    def key(name: str) -> tuple[int, str]:
        if name == "cls_output":
            return (-1, name)
        layer, _, kind = name.partition(".")
        return (int(layer.split("_")[1]), kind)
    return {name: vectors[name] for name in sorted(vectors, key=key)}
