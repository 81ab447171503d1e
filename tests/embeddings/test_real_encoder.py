"""The bundled all-MiniLM-L6-v2 on small slices of real datasets: every task type, every method."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from embeddings.api import embed
from embeddings.data import load_dataset
from embeddings.encoders import default_model_path, load_encoder
from embeddings.options import TaskEmbOptions

pytestmark = pytest.mark.integration

SLICES = {"rte": "classification", "stsb": "regression", "conll2003_ner": "sequence_labeling",
          "squad_v2": "question_answering"}


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_default_encoder_loads_offline_once(real_encoder):
    assert (default_model_path() / "model.safetensors").is_file()
    assert load_encoder("default", "cpu") is real_encoder
    assert real_encoder.name == "sentence-transformers/all-MiniLM-L6-v2"
    assert (real_encoder.hidden_size, real_encoder.num_layers) == (384, 6)
    assert len(real_encoder.weights_hash) == 16 and real_encoder.weights_hash == real_encoder.weights_hash


def test_unknown_model_is_a_clear_error(tmp_path: Path):
    with pytest.raises(ValueError, match="cannot load encoder"):
        load_encoder(str(tmp_path / "no-such-model"), "cpu")
    with pytest.raises(ValueError, match="cannot load encoder 'no-such-org/no-such-model'"):
        load_encoder("no-such-org/no-such-model", "cpu")  # HF_HUB_OFFLINE=1: never reaches a hub


@pytest.mark.parametrize("task", list(SLICES))
def test_every_task_type_and_method(shared_data, real_encoder, task):
    dataset = load_dataset(shared_data / task).subsample(16, seed=1)
    assert dataset.task_type.value == SLICES[task]
    options = TaskEmbOptions(train_steps=5, train_batch_size=8)
    for method in ("textemb", "semb", "taskemb"):
        result = embed(dataset, method, real_encoder, options if method == "taskemb" else None)
        assert result.task_type == SLICES[task] and result.num_examples == 16
        assert result.dataset_hash == dataset.content_hash
        for name, vector in result.vectors.items():
            assert vector.shape == (384,), name
            assert np.isfinite(vector).all() and np.abs(vector).sum() > 0, name
        if method == "taskemb":
            expected = 12 if task == "conll2003_ner" else 13  # tagging has no cls_output component
            assert len(result.vectors) == expected
            again = embed(dataset, method, real_encoder, options)
            for name in result.vectors:
                np.testing.assert_array_equal(result.vectors[name], again.vectors[name])
        if task == "squad_v2":
            assert result.num_features >= result.num_examples  # long contexts give several windows


def test_textemb_places_sentiment_tasks_together(shared_data, real_encoder):
    vectors = {task: embed(load_dataset(shared_data / task).subsample(64, seed=2), "textemb",
                           real_encoder).vectors["text"]
               for task in ("sst2", "sentence_polarity", "conll2003_ner", "squad_v1")}
    near = cosine(vectors["sst2"], vectors["sentence_polarity"])
    assert near > cosine(vectors["sst2"], vectors["conll2003_ner"])
    assert near > cosine(vectors["sst2"], vectors["squad_v1"])
