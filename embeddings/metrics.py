"""The metrics users expect for each task type, by their standard definitions.

Accuracy and macro-F1; Matthews correlation (CoLA); Pearson and Spearman (STS-B); SQuAD exact
match and F1 with the official answer normalisation (v2: an empty prediction is the right answer
to an unanswerable question); entity/chunk F1 as conlleval/seqeval count it (BIO/IOB1 chunks, a
chunk is right only when its type and both ends are) and token accuracy.
"""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Sequence
from typing import Any

import numpy as np


def accuracy(predictions: Sequence[Any], labels: Sequence[Any]) -> float:
    if len(labels) == 0:
        return 0.0
    return float(np.mean([p == y for p, y in zip(predictions, labels, strict=True)]))


def macro_f1(predictions: Sequence[Any], labels: Sequence[Any]) -> float:
    """Unweighted mean of per-class F1 over the classes present in labels or predictions."""
    classes = sorted(set(labels) | set(predictions), key=str)
    scores = []
    for c in classes:
        tp = sum(1 for p, y in zip(predictions, labels, strict=True) if p == c and y == c)
        fp = sum(1 for p, y in zip(predictions, labels, strict=True) if p == c and y != c)
        fn = sum(1 for p, y in zip(predictions, labels, strict=True) if p != c and y == c)
        scores.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return float(np.mean(scores)) if scores else 0.0


def matthews_corrcoef(predictions: Sequence[Any], labels: Sequence[Any]) -> float:
    """Multiclass MCC (Gorodkin's R_K), which is the usual phi coefficient for two classes."""
    classes = sorted(set(labels) | set(predictions), key=str)
    index = {c: i for i, c in enumerate(classes)}
    confusion = np.zeros((len(classes), len(classes)), dtype=np.float64)
    for p, y in zip(predictions, labels, strict=True):
        confusion[index[y], index[p]] += 1
    t = confusion.sum(axis=1)  # true counts per class
    p = confusion.sum(axis=0)  # predicted counts per class
    c, s = np.trace(confusion), confusion.sum()
    denominator = np.sqrt((s * s - p @ p) * (s * s - t @ t))
    return float((c * s - t @ p) / denominator) if denominator else 0.0


def pearson(predictions: Sequence[float] | np.ndarray, labels: Sequence[float] | np.ndarray) -> float:
    x, y = np.asarray(predictions, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    if len(x) < 2 or x.std() == 0 or y.std() == 0:
        return 0.0
    return float(np.corrcoef(x, y)[0, 1])


def _average_ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values), dtype=np.float64)
    sorted_values = values[order]
    start = 0
    while start < len(values):
        end = start
        while end + 1 < len(values) and sorted_values[end + 1] == sorted_values[start]:
            end += 1
        ranks[order[start : end + 1]] = (start + end) / 2 + 1  # ties share their mean rank
        start = end + 1
    return ranks


def spearman(predictions: Sequence[float], labels: Sequence[float]) -> float:
    x, y = np.asarray(predictions, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    return pearson(_average_ranks(x), _average_ranks(y))


# SQuAD -------------------------------------------------------------------------------------------
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower case, drop punctuation and articles, collapse whitespace (the official SQuAD script)."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _exact(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def _f1(prediction: str, gold: str) -> float:
    pred_tokens, gold_tokens = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not pred_tokens or not gold_tokens:  # no-answer: right only when both are empty
        return float(pred_tokens == gold_tokens)
    common = collections.Counter(pred_tokens) & collections.Counter(gold_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def squad_scores(predictions: Sequence[str], gold_answers: Sequence[Sequence[str]]) -> dict[str, float]:
    """Exact match and F1 in percent, max over the gold answers; [] gold means unanswerable ("")."""
    em, f1 = [], []
    for prediction, golds in zip(predictions, gold_answers, strict=True):
        candidates = [g for g in golds if normalize_answer(g)] or [""]
        em.append(max(_exact(prediction, g) for g in candidates))
        f1.append(max(_f1(prediction, g) for g in candidates))
    n = max(len(em), 1)
    return {"exact_match": 100.0 * sum(em) / n, "f1": 100.0 * sum(f1) / n}


# Sequence labelling --------------------------------------------------------------------------------
def _split_tag(tag: str) -> tuple[str, str]:
    if tag in ("O", "", None):
        return "O", ""
    if len(tag) > 1 and tag[1] in "-_" and tag[0] in "BIESLU":
        return tag[0], tag[2:]
    return "I", tag  # a bare type (e.g. POS-like chunk labels) continues or starts a chunk of that type


def chunks(tags: Sequence[str]) -> set[tuple[str, int, int]]:
    """(type, start, end) chunks, conlleval style: B starts, I continues the same type, else starts anew."""
    found: set[tuple[str, int, int]] = set()
    kind, start = None, 0
    for i, tag in enumerate([*tags, "O"]):
        prefix, label = _split_tag(tag)
        begins = prefix in ("B", "S", "U") or (prefix in ("I", "E", "L") and label != kind)
        if kind is not None and (prefix == "O" or begins):
            found.add((kind, start, i))
            kind = None
        if prefix != "O" and (begins or kind is None):
            kind, start = label, i
        if prefix in ("E", "L", "S", "U") and kind is not None:
            found.add((kind, start, i + 1))
            kind = None
    return found


def entity_f1(predictions: Sequence[Sequence[str]], labels: Sequence[Sequence[str]]) -> dict[str, float]:
    """Micro precision/recall/F1 over exact chunk matches (seqeval's default), in percent."""
    tp = n_pred = n_gold = 0
    for pred, gold in zip(predictions, labels, strict=True):
        p, g = chunks(pred), chunks(gold)
        tp += len(p & g)
        n_pred += len(p)
        n_gold += len(g)
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": 100 * precision, "recall": 100 * recall, "f1": 100 * f1}


def token_accuracy(predictions: Sequence[Sequence[str]], labels: Sequence[Sequence[str]]) -> float:
    pairs = [(p, y) for pred, gold in zip(predictions, labels, strict=True) for p, y in zip(pred, gold, strict=True)]
    return 100.0 * sum(p == y for p, y in pairs) / len(pairs) if pairs else 0.0
