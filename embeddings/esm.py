"""Embedding space maps (Schulte et al., EMNLP 2024, "Less is More"): a source's fine-tuning as an affine map.

An ESM maps the base encoder's pooled sentence embeddings of a source's rows to the embeddings of the
same rows under the encoder fine-tuned on that source. ESM-LogME then scores a source for a target
by LogME of the target's base embeddings pushed through the source's map, so a ranking needs one
forward pass of the target and a (d x d) map per source instead of a forward pass per source.

The maps are fitted in closed form (ridge least squares, the penalty chosen on a validation split of
the training rows) rather than by the paper's short training run: same model, no optimiser settings.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import cast

import numpy as np
import torch

from embeddings.data import Dataset, TaskType
from embeddings.encoders import Encoder
from embeddings.features import IGNORE_INDEX, Features, iterate, length_sorted_batches, tokenize
from embeddings.logme import label_matrix, logme_from_gram, logme_many
from embeddings.options import EmbedOptions, ProgressFn, no_progress
from embeddings.textemb import sentence_rows

RIDGE_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
"""Candidate penalties, relative to the mean diagonal of the centred X^T X (so independent of scale)."""
MIN_ROWS = 10


@dataclass(frozen=True, eq=False)
class EmbeddingSpaceMap:
    """apply(x) = x @ weight.T + bias, with weight (d_out, d_in) laid out as in `torch.nn.Linear`."""

    weight: np.ndarray = field(metadata={"help": "(d_out, d_in) float32; row j gives output dimension j."})
    bias: np.ndarray = field(metadata={"help": "(d_out,) float32."})
    r2_heldout: float = field(metadata={"help": "Variance-weighted R^2 of the map on source rows it never saw."})
    rows: int = field(metadata={"help": "Source rows the map was fitted on (the held-out rows excluded)."})
    ridge: float = field(metadata={"help": "Penalty lambda of ||X W - Y||^2 + lambda ||W||^2 on centred rows."})

    def __post_init__(self) -> None:
        weight = np.array(self.weight, dtype=np.float32)
        bias = np.array(self.bias, dtype=np.float32).reshape(-1)
        if weight.ndim != 2 or bias.shape != (weight.shape[0],):
            raise ValueError(f"weight must be (d_out, d_in) and bias (d_out,); got {weight.shape} and {bias.shape}")
        if not (np.isfinite(weight).all() and np.isfinite(bias).all()):
            raise ValueError("embedding space map has NaN or infinite parameters")
        weight.setflags(write=False)
        bias.setflags(write=False)
        object.__setattr__(self, "weight", weight)
        object.__setattr__(self, "bias", bias)

    @property
    def in_dim(self) -> int:
        return int(self.weight.shape[1])

    @property
    def out_dim(self) -> int:
        return int(self.weight.shape[0])

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Base-encoder embeddings (n, d_in) -> approximate fine-tuned embeddings (n, d_out), float32."""
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.in_dim:
            raise ValueError(f"expected (n, {self.in_dim}) embeddings, got {x.shape}")
        return x @ self.weight.T + self.bias

    def to_fp16_arrays(self) -> dict[str, np.ndarray]:
        """For storage beside a source's other vectors: parameters in fp16, the fit's figures in float64."""
        return {"weight": self.weight.astype(np.float16), "bias": self.bias.astype(np.float16),
                "r2_heldout": np.array([self.r2_heldout], dtype=np.float64),
                "rows": np.array([self.rows], dtype=np.int64), "ridge": np.array([self.ridge], dtype=np.float64)}

    def to_int8_arrays(self) -> dict[str, np.ndarray]:
        """The compact storage of shipped maps: the weight int8-coded (`quantise_rows`, about half the
        bytes of fp16), the bias in fp16, the fit's figures in float64."""
        arrays = self.to_fp16_arrays()
        del arrays["weight"]
        return {**quantise_rows(self.weight), **arrays}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> EmbeddingSpaceMap:
        """Inverse of `to_fp16_arrays` and `to_int8_arrays` (any float dtype is accepted for the parameters)."""
        if "weight" not in arrays and {"weight_int8", "weight_scale"} <= set(arrays):
            arrays = {**arrays, "weight": dequantise_rows(arrays)}
        missing = {"weight", "bias", "r2_heldout", "rows", "ridge"} - set(arrays)
        if missing:
            raise ValueError(f"embedding space map arrays lack {sorted(missing)}")
        return cls(weight=np.asarray(arrays["weight"], dtype=np.float32),
                   bias=np.asarray(arrays["bias"], dtype=np.float32),
                   r2_heldout=float(np.asarray(arrays["r2_heldout"]).reshape(-1)[0]),
                   rows=int(np.asarray(arrays["rows"]).reshape(-1)[0]),
                   ridge=float(np.asarray(arrays["ridge"]).reshape(-1)[0]))


INT8_KEYS = ("weight_int8", "weight_scale", "weight_diagonal")
"""Array names of an int8-coded weight (`quantise_rows`); the diagonal only for square maps."""


def quantise_rows(weight: np.ndarray) -> dict[str, np.ndarray]:
    """Symmetric per-row int8 coding of a map's weight, about half the bytes of fp16.

    A square map (an ESM: base to fine-tuned space) keeps its diagonal in fp16 (`weight_diagonal`):
    ESMs are diagonal-dominant (the diagonal is ~3-10x the largest other entry of its row), so coding
    the diagonal apart gives the other entries of each row a finer step. Those are coded as int8 in
    [-127, 127] with one fp16 scale per output row (`weight_scale`, the row's largest absolute entry /
    127; the diagonal's code is 0). Re-coding a decoded weight gives the same codes and scales.
    Measured on the shipped ESMs: `bench/esm_storage.py`.
    """
    w = np.array(weight, dtype=np.float32)
    if w.ndim != 2 or not np.isfinite(w).all():
        raise ValueError(f"expected a finite (d_out, d_in) weight, got shape {w.shape}")
    arrays: dict[str, np.ndarray] = {}
    if w.shape[0] == w.shape[1]:
        arrays["weight_diagonal"] = np.diag(w).astype(np.float16)
        np.fill_diagonal(w, 0.0)
    scales = (np.abs(w).max(axis=1) / 127.0).astype(np.float16)
    safe = np.where(scales > 0, scales.astype(np.float32), 1.0)  # an all-zero (or underflowing) row codes as 0
    arrays["weight_int8"] = np.clip(np.rint(w / safe[:, None]), -127, 127).astype(np.int8)
    arrays["weight_scale"] = scales
    return arrays


def dequantise_rows(arrays: Mapping[str, np.ndarray]) -> np.ndarray:
    """Inverse of `quantise_rows`: the (d_out, d_in) float32 weight."""
    codes, scales = np.asarray(arrays["weight_int8"]), np.asarray(arrays["weight_scale"]).reshape(-1)
    if codes.ndim != 2 or codes.dtype != np.int8 or scales.shape != (codes.shape[0],):
        raise ValueError(f"expected int8 codes (d_out, d_in) and (d_out,) scales, got {codes.dtype} "
                         f"{codes.shape} and {scales.shape}")
    weight = codes.astype(np.float32) * scales.astype(np.float32)[:, None]
    diagonal = arrays.get("weight_diagonal")
    if diagonal is not None:
        diagonal = np.asarray(diagonal, dtype=np.float32).reshape(-1)
        if codes.shape[0] != codes.shape[1] or diagonal.shape != (codes.shape[0],):
            raise ValueError(f"a diagonal of {diagonal.shape} does not fit a {codes.shape} weight")
        np.fill_diagonal(weight, diagonal)
    return weight


def fit_esm(base: np.ndarray, tuned: np.ndarray, *, seed: int = 13, heldout: float = 0.2) -> EmbeddingSpaceMap:
    """Ridge least squares from base to tuned embeddings of the same rows, R^2 reported on held-out rows.

    A seeded `heldout` share of the rows is set aside; the penalty is chosen from `RIDGE_GRID` on a
    further 20% of the rest, and the stored map is refitted on all non-held-out rows, so its R^2 is
    that of exactly the stored parameters on rows it never saw.
    """
    x = np.asarray(base, dtype=np.float64)
    y = np.asarray(tuned, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"base and tuned must be (n, d) embeddings of the same rows; got {x.shape} and {y.shape}")
    if not 0 < heldout < 1:
        raise ValueError("heldout must be in (0, 1)")
    if x.shape[0] < MIN_ROWS:
        raise ValueError(f"an embedding space map needs at least {MIN_ROWS} rows, got {x.shape[0]}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("embeddings contain NaN or infinity")
    rng = np.random.default_rng(seed)
    order = rng.permutation(x.shape[0])
    cut = min(max(2, round(heldout * len(order))), len(order) - 4)
    held, train = order[:cut], order[cut:]
    inner = max(2, round(0.2 * len(train)))
    fit_rows, check_rows = train[inner:], train[:inner]

    def validation_error(relative: float) -> float:
        weight, bias, _ = _ridge(x[fit_rows], y[fit_rows], relative)
        return float(((x[check_rows] @ weight.T + bias - y[check_rows]) ** 2).sum())

    relative = min(RIDGE_GRID, key=validation_error)
    weight, bias, penalty = _ridge(x[train], y[train], relative)
    prediction = x[held] @ weight.T + bias
    return EmbeddingSpaceMap(weight=weight, bias=bias, r2_heldout=_r2(y[held], prediction), rows=len(train),
                             ridge=penalty)


def _ridge(x: np.ndarray, y: np.ndarray, relative: float) -> tuple[np.ndarray, np.ndarray, float]:
    """Closed-form ridge on centred rows (the bias is not penalised): weight (d_out, d_in), bias, lambda."""
    x_mean, y_mean = x.mean(axis=0), y.mean(axis=0)
    xc, yc = x - x_mean, y - y_mean
    gram = xc.T @ xc
    penalty = relative * max(float(np.trace(gram)) / gram.shape[0], 1e-12)
    solution = np.linalg.solve(gram + penalty * np.eye(gram.shape[0]), xc.T @ yc)  # (d_in, d_out)
    return solution.T, y_mean - x_mean @ solution, penalty


def _r2(truth: np.ndarray, prediction: np.ndarray) -> float:
    """Variance-weighted R^2 over all output dimensions (1 - SSE / SST about the held-out mean)."""
    sse = float(((truth - prediction) ** 2).sum())
    sst = float(((truth - truth.mean(axis=0)) ** 2).sum())
    if sst <= 1e-12 * max(1.0, float((truth**2).sum())):
        return 1.0 if sse <= 1e-12 * max(1.0, float((truth**2).sum())) else 0.0
    return 1.0 - sse / sst


def pooled_embeddings(dataset: Dataset, encoder: Encoder, state_dict: Mapping[str, torch.Tensor] | None = None,
                      options: EmbedOptions | None = None, on_progress: ProgressFn = no_progress) -> np.ndarray:
    """Per-row pooled embeddings (rows, H) exactly as SEmb pools them, optionally under fine-tuned weights.

    `state_dict` (an encoder body's state, as `source_encoder_state` returns) is loaded strictly into a
    copy of `encoder.model`; the shared encoder is never modified.
    """
    model = None
    if state_dict is not None:
        model = copy.deepcopy(encoder.model)
        model.load_state_dict(dict(state_dict), strict=True)
    return sentence_rows(dataset, encoder, options, model=model, on_progress=on_progress)


TOKEN_BUDGET = 4000
"""Tagged tokens a sequence-labelling target is scored on by LogME and ESM-LogME: a seeded sample of
the target's words (first sub-token of each), the same whichever encoder embeds them. 4,000 tokens
are about 200 sentences of ud_ewt_pos, ten times the 384 feature dimensions LogME fits."""


@dataclass(frozen=True)
class TokenSample:
    """Which tagged tokens of a tokenised sequence-labelling dataset are scored, and their tags."""

    feature: np.ndarray = field(metadata={"help": "(n,) index of the tokenised row each chosen token is in."})
    position: np.ndarray = field(metadata={"help": "(n,) the token's position in that row (a word's first sub-token)."})
    tags: np.ndarray = field(metadata={"help": "(n,) tag ids, indexes into the dataset's label names."})


def token_sample(features: Features, *, budget: int = TOKEN_BUDGET, seed: int = 13) -> TokenSample:
    """Up to `budget` tagged tokens, drawn uniformly over all tagged tokens with `seed`, in data order.

    Only tokenisation decides the draw (never the model), so the base encoder and each fine-tuned one
    see the same tokens, and the tags are known before any forward pass.
    """
    if features.task_type != TaskType.SEQUENCE_LABELING or features.labels is None:
        raise ValueError("token samples are drawn from a tokenised sequence-labelling dataset")
    if budget < 2:
        raise ValueError("the token budget must be at least 2")
    rows, positions, tags = [], [], []
    for i, labels in enumerate(cast(list[np.ndarray], features.labels)):
        where = np.flatnonzero(labels != IGNORE_INDEX)
        rows.append(np.full(len(where), i, dtype=np.int64))
        positions.append(where.astype(np.int64))
        tags.append(labels[where].astype(np.int64))
    row, position, tag = (np.concatenate(x) if x else np.zeros(0, np.int64) for x in (rows, positions, tags))
    if len(row) > budget:
        keep = np.sort(np.random.default_rng(seed).choice(len(row), size=budget, replace=False))
        row, position, tag = row[keep], position[keep], tag[keep]
    return TokenSample(feature=row, position=position, tags=tag)


def token_tags(dataset: Dataset, encoder: Encoder, options: EmbedOptions | None = None, *,
               budget: int = TOKEN_BUDGET, seed: int = 13) -> np.ndarray:
    """The tag ids of the tokens `token_embeddings` returns, from tokenisation alone (no forward pass)."""
    features = tokenize(dataset, encoder.tokenizer, options or EmbedOptions())
    return token_sample(features, budget=budget, seed=seed).tags


def token_embeddings(dataset: Dataset, encoder: Encoder, state_dict: Mapping[str, torch.Tensor] | None = None,
                     options: EmbedOptions | None = None, *, budget: int = TOKEN_BUDGET, seed: int = 13,
                     on_progress: ProgressFn = no_progress) -> tuple[np.ndarray, np.ndarray]:
    """A sequence-labelling dataset as LogME rows: ((n, H) token vectors, (n,) tag ids), n <= `budget`.

    Each row is the final-layer state of a word's first sub-token (the token the tagging head is
    trained on), L2-normalised like SEmb's pooled rows so it lies where an ESM's inputs lie. An ESM
    was fitted on pooled sentence vectors, not on token states, so mapping tokens through it is an
    approximation (Schulte et al. map pooled features only). Only rows holding a sampled token are
    run through the encoder. `state_dict` as in `pooled_embeddings`.
    """
    options = options or EmbedOptions()
    features = tokenize(dataset, encoder.tokenizer, options)
    sample = token_sample(features, budget=budget, seed=seed)
    if len(sample.tags) < 2:
        raise ValueError(f"dataset {dataset.name!r} has fewer than 2 tagged tokens")
    model = encoder.model
    if state_dict is not None:
        model = copy.deepcopy(encoder.model)
        model.load_state_dict(dict(state_dict), strict=True)
    needed = np.unique(sample.feature)
    lengths = features.lengths[needed]
    batches = [needed[b] for b in length_sorted_batches(lengths, options.max_tokens_per_batch,
                                                        options.max_batch_size)]
    out = np.empty((len(sample.tags), encoder.hidden_size), dtype=np.float32)
    by_feature: dict[int, np.ndarray] = {}
    order = np.argsort(sample.feature, kind="stable")
    starts = np.searchsorted(sample.feature[order], needed)
    ends = np.searchsorted(sample.feature[order], needed, side="right")
    for f, a, b in zip(needed.tolist(), starts.tolist(), ends.tolist(), strict=True):
        by_feature[f] = order[a:b]  # which output rows come from feature f
    done = 0
    on_progress(0, len(needed))
    model.eval()
    with torch.inference_mode():
        for batch in iterate(features, batches, encoder.device, with_labels=False):
            with encoder.autocast():
                states = model(**batch.model_inputs()).last_hidden_state
            states = torch.nn.functional.normalize(states.float(), dim=-1).cpu().numpy()
            for j, f in enumerate(batch.index.tolist()):
                rows = by_feature[f]
                out[rows] = states[j, sample.position[rows]]
            done += len(batch.index)
            on_progress(done, len(needed))
    return out, sample.tags


def esm_logme_scores(target_rows_base: np.ndarray, labels: np.ndarray, maps: Sequence[EmbeddingSpaceMap],
                     regression: bool = False) -> np.ndarray:
    """LogME of the target's base embeddings pushed through each source's map: one score per map.

    Equal to `logme_many` on the stacked mapped embeddings, but for n > d_out it never forms them:
    with X1 = [X, 1] and M = [W^T; b], F^T F = M^T (X1^T X1) M and F^T y = M^T (X1^T y), so the
    n-row products are done once for all sources.
    """
    x = np.asarray(target_rows_base, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"target embeddings must be (n, d), got {x.shape}")
    if not maps:
        return np.zeros(0)
    if any(m.in_dim != x.shape[1] for m in maps) or len({m.out_dim for m in maps}) != 1:
        raise ValueError(f"every map must take {x.shape[1]}-dimensional embeddings and share one output size")
    targets = label_matrix(labels, regression=regression)
    n, out_dim = x.shape[0], maps[0].out_dim
    weights = np.stack([m.weight for m in maps]).astype(np.float64)  # (s, d_out, d_in)
    biases = np.stack([m.bias for m in maps]).astype(np.float64)  # (s, d_out)
    if out_dim > n or targets.shape[0] != n:  # few rows: the mapped features are the smaller thing to form
        return logme_many(x @ weights.transpose(0, 2, 1) + biases[:, None, :], labels, regression=regression)
    if not np.isfinite(x).all():
        raise ValueError("target embeddings contain NaN or infinity")
    augmented = torch.from_numpy(np.hstack([x, np.ones((n, 1))]))  # (n, d_in + 1)
    stacked = torch.from_numpy(np.concatenate([weights.transpose(0, 2, 1), biases[:, None, :]], axis=1))
    gram = stacked.mT @ (augmented.T @ augmented) @ stacked  # (s, d_out, d_out)
    cross = stacked.mT @ (augmented.T @ torch.from_numpy(targets))  # (s, d_out, k)
    return logme_from_gram(gram.numpy(), cross.numpy(), targets, n)
