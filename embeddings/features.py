"""Tokenise a dataset once into compact arrays, then serve length-sorted, per-batch-padded batches.

Every method (TextEmb, SEmb, TaskEmb, fine-tuning) reads its inputs through here, so the
task type decides the tokenisation and the labels, never the maths downstream.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from embeddings.data import Dataset, QAExample, TaggingExample, TaskType, TextExample

IGNORE_INDEX = -100
_CHUNK = 2048  # examples tokenised per call: keeps the tokenizer's Python lists short-lived


@dataclass(frozen=True)
class TokenizeOptions:
    max_length: int = field(default=256, metadata={"help": "Truncation length for text and tagging tasks."})
    qa_max_length: int = field(default=384, metadata={"help": "Window length for question answering."})
    qa_stride: int = field(default=128, metadata={"help": "Overlap between QA windows (document stride)."})

    def __post_init__(self) -> None:
        if self.max_length < 8 or self.qa_max_length < 32:
            raise ValueError("max_length must be >= 8 and qa_max_length >= 32")
        if not 0 <= self.qa_stride < self.qa_max_length // 2:
            raise ValueError("qa_stride must be in [0, qa_max_length / 2)")


@dataclass
class Features:
    """Token ids of every feature (a QA example may give several windows) and their labels."""

    task_type: TaskType
    input_ids: list[np.ndarray]
    token_type_ids: list[np.ndarray] | None
    example_index: np.ndarray  # feature -> example row
    labels: np.ndarray | list[np.ndarray] | None  # class ids / floats / (start, end) / per-token tag ids
    num_labels: int
    label_names: list[str]
    pad_token_id: int
    offsets: list[np.ndarray] | None = None  # QA: (token, 2) character spans in the context
    context_mask: list[np.ndarray] | None = None  # QA: which tokens are context (answer candidates)

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(ids) for ids in self.input_ids), dtype=np.int64, count=len(self.input_ids))

    @property
    def num_tokens(self) -> int:
        return int(self.lengths.sum())


@dataclass
class Batch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    token_type_ids: torch.Tensor | None
    labels: torch.Tensor | None
    index: np.ndarray  # which features are in this batch

    def model_inputs(self) -> dict[str, torch.Tensor]:
        inputs = {"input_ids": self.input_ids, "attention_mask": self.attention_mask}
        if self.token_type_ids is not None:
            inputs["token_type_ids"] = self.token_type_ids
        return inputs


def tokenize(dataset: Dataset, tokenizer: PreTrainedTokenizerBase, options: TokenizeOptions) -> Features:
    if dataset.task_type == TaskType.QUESTION_ANSWERING:
        return _tokenize_qa(dataset, tokenizer, options)
    if dataset.task_type == TaskType.SEQUENCE_LABELING:
        return _tokenize_tagging(dataset, tokenizer, options)
    return _tokenize_text(dataset, tokenizer, options)


def _arrays(encoded: dict[str, Any], key: str) -> list[np.ndarray]:
    return [np.asarray(ids, dtype=np.int32) for ids in encoded[key]]


def _tokenize_text(dataset: Dataset, tokenizer: PreTrainedTokenizerBase, options: TokenizeOptions) -> Features:
    examples: list[TextExample] = dataset.examples  # type: ignore[assignment]
    wants_types = "token_type_ids" in tokenizer.model_input_names
    input_ids: list[np.ndarray] = []
    type_ids: list[np.ndarray] = []
    for start in range(0, len(examples), _CHUNK):
        chunk = examples[start : start + _CHUNK]
        texts = [ex.text for ex in chunk]
        pairs = [ex.text_pair or "" for ex in chunk] if dataset.is_pair else None
        enc = tokenizer(texts, pairs, truncation=True, max_length=options.max_length,
                        return_attention_mask=False, return_token_type_ids=wants_types)
        input_ids += _arrays(enc, "input_ids")
        if wants_types:
            type_ids += _arrays(enc, "token_type_ids")
    if dataset.task_type == TaskType.REGRESSION:
        labels = np.array([float(ex.label) for ex in examples], dtype=np.float32)  # type: ignore[arg-type]
        num_labels, names = 1, []
    else:
        names = list(dataset.labels)
        lookup = {name: i for i, name in enumerate(names)}
        labels = np.array([lookup[str(ex.label)] for ex in examples], dtype=np.int64)
        num_labels = len(names)
    return Features(dataset.task_type, input_ids, type_ids if wants_types else None,
                    np.arange(len(examples)), labels, num_labels, names, tokenizer.pad_token_id or 0)


def _tokenize_tagging(dataset: Dataset, tokenizer: PreTrainedTokenizerBase, options: TokenizeOptions) -> Features:
    examples: list[TaggingExample] = dataset.examples  # type: ignore[assignment]
    names = list(dataset.labels)
    lookup = {name: i for i, name in enumerate(names)}
    wants_types = "token_type_ids" in tokenizer.model_input_names
    input_ids: list[np.ndarray] = []
    type_ids: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    for start in range(0, len(examples), _CHUNK):
        chunk = examples[start : start + _CHUNK]
        enc = tokenizer([ex.tokens for ex in chunk], is_split_into_words=True, truncation=True,
                        max_length=options.max_length, return_attention_mask=False,
                        return_token_type_ids=wants_types)
        input_ids += _arrays(enc, "input_ids")
        if wants_types:
            type_ids += _arrays(enc, "token_type_ids")
        for i, ex in enumerate(chunk):
            tags = np.full(len(enc["input_ids"][i]), IGNORE_INDEX, dtype=np.int64)
            previous = None
            for pos, word in enumerate(enc.word_ids(i)):
                if word is not None and word != previous:  # label the first sub-token of each word
                    tags[pos] = lookup[ex.tags[word]]
                previous = word
            labels.append(tags)
    return Features(dataset.task_type, input_ids, type_ids if wants_types else None,
                    np.arange(len(examples)), labels, len(names), names, tokenizer.pad_token_id or 0)


def _tokenize_qa(dataset: Dataset, tokenizer: PreTrainedTokenizerBase, options: TokenizeOptions) -> Features:
    """Question + context windows (max length 384, stride 128); a span outside the window points at CLS."""
    examples: list[QAExample] = dataset.examples  # type: ignore[assignment]
    wants_types = "token_type_ids" in tokenizer.model_input_names
    pad_right = tokenizer.padding_side == "right"
    input_ids: list[np.ndarray] = []
    type_ids: list[np.ndarray] = []
    example_index: list[int] = []
    spans: list[tuple[int, int]] = []
    offsets: list[np.ndarray] = []
    context_mask: list[np.ndarray] = []
    for start in range(0, len(examples), _CHUNK):
        chunk = examples[start : start + _CHUNK]
        questions = [ex.question.lstrip() for ex in chunk]
        contexts = [ex.context for ex in chunk]
        enc = tokenizer(questions if pad_right else contexts, contexts if pad_right else questions,
                        truncation="only_second" if pad_right else "only_first",
                        max_length=options.qa_max_length, stride=options.qa_stride,
                        return_overflowing_tokens=True, return_offsets_mapping=True,
                        return_attention_mask=False, return_token_type_ids=wants_types)
        input_ids += _arrays(enc, "input_ids")
        if wants_types:
            type_ids += _arrays(enc, "token_type_ids")
        context_id = 1 if pad_right else 0
        for feature, row in enumerate(enc["overflow_to_sample_mapping"]):
            ex = chunk[row]
            example_index.append(start + row)
            sequence_ids = enc.sequence_ids(feature)
            spans.append(_answer_span(ex, enc["offset_mapping"][feature], sequence_ids, context_id))
            offsets.append(np.asarray(enc["offset_mapping"][feature], dtype=np.int32).reshape(-1, 2))
            context_mask.append(np.array([s == context_id for s in sequence_ids], dtype=bool))
    labels = np.array(spans, dtype=np.int64).reshape(-1, 2)
    return Features(dataset.task_type, input_ids, type_ids if wants_types else None,
                    np.array(example_index, dtype=np.int64), labels, 2, [], tokenizer.pad_token_id or 0,
                    offsets=offsets, context_mask=context_mask)


def _answer_span(ex: QAExample, offsets: Sequence[tuple[int, int]], sequence_ids: Sequence[int | None],
                 context_id: int) -> tuple[int, int]:
    if not ex.answer_texts:
        return 0, 0
    first_char = ex.answer_starts[0]
    last_char = first_char + len(ex.answer_texts[0])
    context_positions = [i for i, s in enumerate(sequence_ids) if s == context_id]
    if not context_positions:
        return 0, 0
    lo, hi = context_positions[0], context_positions[-1]
    if offsets[lo][0] > first_char or offsets[hi][1] < last_char:
        return 0, 0  # the answer is not (wholly) inside this window
    start = lo
    while start <= hi and offsets[start][0] <= first_char:
        start += 1
    end = hi
    while end >= lo and offsets[end][1] >= last_char:
        end -= 1
    return start - 1, end + 1


def length_sorted_batches(lengths: np.ndarray, max_tokens: int, max_batch_size: int = 512) -> list[np.ndarray]:
    """Longest first, so the largest batch (and any out-of-memory) comes at once; padded tokens <= max_tokens."""
    order = np.argsort(-lengths, kind="stable")
    batches: list[np.ndarray] = []
    start = 0
    while start < len(order):
        longest = int(lengths[order[start]])
        size = max(1, min(max_batch_size, max_tokens // max(longest, 1)))
        batches.append(order[start : start + size])
        start += size
    return batches


def length_grouped_order(lengths: np.ndarray, batch_size: int, rng: np.random.Generator,
                         megabatch: int = 50) -> list[int]:
    """A shuffled epoch whose consecutive `batch_size` rows have similar lengths (less padding).

    As `group_by_length` in HF's Trainer: shuffle, cut into megabatches of `megabatch * batch_size`
    rows, sort each by length, cut into batches, then shuffle the batches. Batches stay random
    samples of the data; only their padding shrinks (2-3x fewer tokens on short-text tasks).
    """
    order = rng.permutation(len(lengths))
    size = batch_size * megabatch
    batches: list[np.ndarray] = []
    for start in range(0, len(order), size):
        chunk = order[start:start + size]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        batches.extend(chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size))
    shuffled = [batches[j] for j in rng.permutation(len(batches))]
    shuffled.sort(key=lambda b: len(b) < batch_size)  # a short batch last: pops stay batch-aligned
    return [int(i) for b in shuffled for i in b]


def fixed_batches(count: int, batch_size: int) -> list[np.ndarray]:
    """Batches in data order, as the original TaskEmb code made them (used by the naive baseline)."""
    return [np.arange(i, min(i + batch_size, count)) for i in range(0, count, batch_size)]


def collate(features: Features, index: np.ndarray, device: torch.device, pad_to: int | None = None,
            with_labels: bool = True) -> Batch:
    """Pad to the longest feature of the batch (or to `pad_to`, the naive baseline's fixed 128)."""
    lengths = [len(features.input_ids[i]) for i in index]
    width = max(lengths) if pad_to is None else max(pad_to, max(lengths))
    if pad_to is None and device.type == "cuda":
        width = -(-width // 8) * 8  # tensor-core friendly
    ids = np.full((len(index), width), features.pad_token_id, dtype=np.int64)
    mask = np.zeros((len(index), width), dtype=np.int64)
    types = np.zeros((len(index), width), dtype=np.int64) if features.token_type_ids is not None else None
    for row, (i, n) in enumerate(zip(index, lengths, strict=True)):
        ids[row, :n] = features.input_ids[i]
        mask[row, :n] = 1
        if types is not None:
            types[row, :n] = features.token_type_ids[i]  # type: ignore[index]
    labels = _collate_labels(features, index, width) if with_labels and features.labels is not None else None
    non_blocking = device.type == "cuda"

    def move(array: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(array)
        return tensor.pin_memory().to(device, non_blocking=True) if non_blocking else tensor

    return Batch(move(ids), move(mask), move(types) if types is not None else None,
                 move(labels) if labels is not None else None, index)


def _collate_labels(features: Features, index: np.ndarray, width: int) -> np.ndarray:
    if features.task_type == TaskType.SEQUENCE_LABELING:
        out = np.full((len(index), width), IGNORE_INDEX, dtype=np.int64)
        for row, i in enumerate(index):
            tags = features.labels[i]  # type: ignore[index]
            out[row, : len(tags)] = tags
        return out
    return np.ascontiguousarray(features.labels[index])  # type: ignore[index]


def iterate(features: Features, batches: list[np.ndarray], device: torch.device, pad_to: int | None = None,
            with_labels: bool = True) -> Iterator[Batch]:
    for index in batches:
        yield collate(features, index, device, pad_to=pad_to, with_labels=with_labels)
