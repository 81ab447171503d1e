"""Synthetic embeddings for the library tests (no model needed)."""

from __future__ import annotations

import hashlib

import numpy as np

from embeddings.result import EmbeddingResult

PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
MODEL = "test/encoder"
MODEL_HASH = "a" * 64


def data_hash(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def make_result(
    method: str,
    vectors: dict[str, np.ndarray],
    *,
    dataset: str = "target",
    task_type: str = "classification",
    model_name: str = MODEL,
    model_hash: str = MODEL_HASH,
) -> EmbeddingResult:
    return EmbeddingResult(
        method=method,
        vectors={k: np.asarray(v, dtype=np.float32) for k, v in vectors.items()},
        model_name=model_name,
        model_hash=model_hash,
        dataset_name=dataset,
        dataset_hash=data_hash(dataset),
        task_type=task_type,
        num_examples=100,
        num_features=0,
        num_tokens=0,
    )
