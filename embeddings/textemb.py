"""TextEmb (Vu et al. 2020) and SEmb (Poth et al. 2021): what the data looks like to the encoder.

Both come from one forward pass: TextEmb is the mean of every final-layer token state over the whole
dataset; SEmb is the mean over examples of each example's L2-normalised mean-pooled state.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from embeddings.data import Dataset
from embeddings.encoders import Encoder
from embeddings.features import Features, fixed_batches, iterate, length_sorted_batches, tokenize
from embeddings.options import EmbedOptions, ProgressFn, library_versions, no_progress
from embeddings.result import EmbeddingResult


def plan_batches(features: Features, options: EmbedOptions) -> list[np.ndarray]:
    if options.fixed_batch_size:
        return fixed_batches(len(features), options.fixed_batch_size)
    return length_sorted_batches(features.lengths, options.max_tokens_per_batch, options.max_batch_size)


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
    total, done = len(features), 0
    on_progress(0, total)
    encoder.model.eval()
    with torch.inference_mode():
        for batch in iterate(features, plan_batches(features, options), device, pad_to=options.pad_to,
                             with_labels=False):
            with encoder.autocast():
                states = encoder.model(**batch.model_inputs()).last_hidden_state
            mask = batch.attention_mask.unsqueeze(-1).to(torch.float32)
            summed = (states.float() * mask).sum(dim=1)  # (B, H), masked sum as sentence-transformers
            counts = mask.sum(dim=1).clamp(min=1e-9)
            token_sum += summed.sum(dim=0, dtype=torch.float64)
            token_count += counts.sum(dtype=torch.float64)
            sentence_sum += torch.nn.functional.normalize(summed / counts, dim=-1).sum(dim=0, dtype=torch.float64)
            done += len(batch.index)
            on_progress(done, total)
    text_vec = (token_sum / token_count).float().cpu().numpy()
    sentence_vec = (sentence_sum / total).float().cpu().numpy()
    seconds = time.perf_counter() - started
    common = dict(model_name=encoder.name, model_hash=encoder.weights_hash, dataset_name=dataset.name,
                  dataset_hash=dataset.content_hash, task_type=dataset.task_type.value,
                  num_examples=len(dataset), num_features=total, num_tokens=features.num_tokens,
                  options=options.to_dict(), versions=library_versions(), seconds=seconds)
    return (EmbeddingResult(method="textemb", vectors={"text": text_vec}, **common),
            EmbeddingResult(method="semb", vectors={"sentence": sentence_vec}, **common))


def text_embedding(dataset: Dataset, encoder: Encoder, options: EmbedOptions | None = None,
                   on_progress: ProgressFn = no_progress) -> EmbeddingResult:
    """TextEmb: masked mean of final-layer token states over every token of the dataset."""
    return text_and_sentence_embeddings(dataset, encoder, options, on_progress)[0]


def sentence_embedding(dataset: Dataset, encoder: Encoder, options: EmbedOptions | None = None,
                       on_progress: ProgressFn = no_progress) -> EmbeddingResult:
    """SEmb: mean over examples of L2-normalised mean-pooled sentence embeddings."""
    return text_and_sentence_embeddings(dataset, encoder, options, on_progress)[1]
