"""TextEmb (Vu et al. 2020) and SEmb (Poth et al. 2021): what the data looks like to the encoder.

Both come from one forward pass: TextEmb is the mean of every final-layer token state over the whole
dataset; SEmb is the mean over examples of each example's L2-normalised mean-pooled state.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from embeddings.data import Dataset
from embeddings.encoders import Encoder
from embeddings.features import Batch, Features, fixed_batches, iterate, length_sorted_batches, tokenize
from embeddings.options import EmbedOptions, ProgressFn, library_versions, no_progress
from embeddings.result import EmbeddingResult


def plan_batches(features: Features, options: EmbedOptions) -> list[np.ndarray]:
    if options.fixed_batch_size:
        return fixed_batches(len(features), options.fixed_batch_size)
    return length_sorted_batches(features.lengths, options.max_tokens_per_batch, options.max_batch_size)


Consume = Callable[[Batch, torch.Tensor, torch.Tensor], None]
"""`consume(batch, summed, counts)`: masked token sums (B, H) float32 and token counts (B, 1) of one batch."""


def _pooled_batches(features: Features, encoder: Encoder, model: torch.nn.Module, options: EmbedOptions,
                    on_progress: ProgressFn, consume: Consume) -> None:
    """The one forward pass and masked pooling every per-dataset and per-row embedding goes through.

    A callback rather than a generator, so `inference_mode` never leaks into the caller between batches.
    """
    total, done = len(features), 0
    on_progress(0, total)
    model.eval()
    with torch.inference_mode():
        for batch in iterate(features, plan_batches(features, options), encoder.device, pad_to=options.pad_to,
                             with_labels=False):
            with encoder.autocast():
                states = model(**batch.model_inputs()).last_hidden_state
            mask = batch.attention_mask.unsqueeze(-1).to(torch.float32)
            summed = (states.float() * mask).sum(dim=1)  # (B, H), masked sum as sentence-transformers
            counts = mask.sum(dim=1).clamp(min=1e-9)
            consume(batch, summed, counts)
            done += len(batch.index)
            on_progress(done, total)


def _sentence_vectors(summed: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """SEmb's per-row vector: the L2-normalised masked mean of the final-layer token states."""
    return torch.nn.functional.normalize(summed / counts, dim=-1)


def text_and_sentence_embeddings(
    dataset: Dataset,
    encoder: Encoder,
    options: EmbedOptions | None = None,
    on_progress: ProgressFn = no_progress,
) -> tuple[EmbeddingResult, EmbeddingResult]:
    """One pass for both methods: the forward pass dominates and is shared."""
    options = options or EmbedOptions()
    started = time.perf_counter()
    features = tokenize(dataset, encoder.tokenizer, options)
    if len(features) == 0:
        raise ValueError(f"dataset {dataset.name!r} has no rows to embed")
    device = encoder.device
    hidden = encoder.hidden_size
    # Accumulators stay on the device: no per-batch host synchronisation, memory flat in the row count.
    token_sum = torch.zeros(hidden, dtype=torch.float64, device=device)
    sentence_sum = torch.zeros(hidden, dtype=torch.float64, device=device)
    token_count = torch.zeros((), dtype=torch.float64, device=device)
    total = len(features)

    def accumulate(batch: Batch, summed: torch.Tensor, counts: torch.Tensor) -> None:
        token_sum.add_(summed.sum(dim=0, dtype=torch.float64))
        token_count.add_(counts.sum(dtype=torch.float64))
        sentence_sum.add_(_sentence_vectors(summed, counts).sum(dim=0, dtype=torch.float64))

    _pooled_batches(features, encoder, encoder.model, options, on_progress, accumulate)
    text_vec = (token_sum / token_count).float().cpu().numpy()
    sentence_vec = (sentence_sum / total).float().cpu().numpy()
    seconds = time.perf_counter() - started
    common: dict[str, Any] = dict(model_name=encoder.name, model_hash=encoder.weights_hash, dataset_name=dataset.name,
                  dataset_hash=dataset.content_hash, task_type=dataset.task_type.value,
                  num_examples=len(dataset), num_features=total, num_tokens=features.num_tokens,
                  options=options.to_dict(), versions=library_versions(), seconds=seconds)
    return (EmbeddingResult(method="textemb", vectors={"text": text_vec}, **common),
            EmbeddingResult(method="semb", vectors={"sentence": sentence_vec}, **common))


def sentence_rows(dataset: Dataset, encoder: Encoder, options: EmbedOptions | None = None, *,
                  model: torch.nn.Module | None = None, on_progress: ProgressFn = no_progress) -> np.ndarray:
    """The per-row vectors SEmb averages, (features, H) float32 in feature order (a QA window is a row).

    `model` replaces `encoder.model` (a fine-tuned copy, for ESMs and LogME); tokenisation, batching and
    pooling stay those of SEmb, so the two paths cannot drift.
    """
    options = options or EmbedOptions()
    features = tokenize(dataset, encoder.tokenizer, options)
    if len(features) == 0:
        raise ValueError(f"dataset {dataset.name!r} has no rows to embed")
    rows = np.empty((len(features), encoder.hidden_size), dtype=np.float32)

    def store(batch: Batch, summed: torch.Tensor, counts: torch.Tensor) -> None:
        rows[batch.index] = _sentence_vectors(summed, counts).cpu().numpy()

    _pooled_batches(features, encoder, encoder.model if model is None else model, options, on_progress, store)
    return rows


def text_embedding(dataset: Dataset, encoder: Encoder, options: EmbedOptions | None = None,
                   on_progress: ProgressFn = no_progress) -> EmbeddingResult:
    """TextEmb: masked mean of final-layer token states over every token of the dataset."""
    return text_and_sentence_embeddings(dataset, encoder, options, on_progress)[0]


def sentence_embedding(dataset: Dataset, encoder: Encoder, options: EmbedOptions | None = None,
                       on_progress: ProgressFn = no_progress) -> EmbeddingResult:
    """SEmb: mean over examples of L2-normalised mean-pooled sentence embeddings."""
    return text_and_sentence_embeddings(dataset, encoder, options, on_progress)[1]
