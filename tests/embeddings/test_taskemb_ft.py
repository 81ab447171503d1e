"""TaskEmb read from a fine-tuned checkpoint (`taskemb_ft`): same layout, other encoder, recorded provenance."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from embeddings.api import embed
from embeddings.options import TaskEmbOptions
from embeddings.taskemb import checkpoint_sha256, fisher_embedding, fisher_embedding_from_checkpoint
from tests.embeddings.test_embeddings import classification

OPTIONS = TaskEmbOptions(train_steps=5, train_batch_size=4, seed=3)


def write_checkpoint(encoder, path: Path, noise: float, seed: int) -> Path:
    """The encoder's state with seeded noise on every weight (a stand-in for a fine-tuning), as the
    transfer cache stores it: safetensors of the encoder body with a JSON sidecar."""
    generator = torch.Generator().manual_seed(seed)
    state = {k: (v.detach().cpu() + noise * torch.randn(v.shape, generator=generator)
                 if v.is_floating_point() else v.detach().cpu()).contiguous()
             for k, v in encoder.model.state_dict().items()}
    save_file(state, str(path))
    path.with_suffix(".json").write_text(json.dumps({"source": "toy-cls", "rows": 16, "dev_score": 50.0,
                                                     "best_step": 4, "options": {"epochs": 2.0}}))
    return path


def test_checkpoint_based_taskemb_differs_and_depends_on_the_checkpoint(tiny_encoder, tmp_path):
    dataset = classification(16)
    before = {k: v.clone() for k, v in tiny_encoder.model.state_dict().items()}
    first = write_checkpoint(tiny_encoder, tmp_path / "a.safetensors", noise=0.05, seed=1)
    second = write_checkpoint(tiny_encoder, tmp_path / "b.safetensors", noise=0.05, seed=2)
    brief = fisher_embedding(dataset, tiny_encoder, OPTIONS)
    tuned = fisher_embedding_from_checkpoint(dataset, tiny_encoder, first, OPTIONS)
    again = fisher_embedding_from_checkpoint(dataset, tiny_encoder, first, OPTIONS)
    other = fisher_embedding_from_checkpoint(dataset, tiny_encoder, second, OPTIONS)

    assert list(tuned.vectors) == list(brief.vectors)  # the same components, so the same index layout
    assert all(tuned.vectors[c].shape == brief.vectors[c].shape for c in brief.vectors)
    assert not np.allclose(tuned.vectors["cls_output"], brief.vectors["cls_output"])
    assert not np.allclose(tuned.vectors["layer_0.output"], other.vectors["layer_0.output"])
    for c in tuned.vectors:  # deterministic for one checkpoint
        np.testing.assert_array_equal(tuned.vectors[c], again.vectors[c])
    assert tuned.method == "taskemb_ft" and brief.method == "taskemb"
    assert tuned.model_hash == tiny_encoder.weights_hash  # the library key stays the base encoder's
    assert tuned.options["encoder_state"] == "source_checkpoint"
    assert tuned.options["checkpoint"] == "a.safetensors"
    assert tuned.options["checkpoint_sha256"] == checkpoint_sha256(first) != checkpoint_sha256(second)
    assert tuned.options["finetuned_weights_hash"] != tiny_encoder.weights_hash
    assert tuned.options["source_regime"] == {"epochs": 2.0} and tuned.options["source_rows"] == 16
    assert tuned.options["train_steps"] == OPTIONS.train_steps  # the TaskEmb options too
    after = tiny_encoder.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the shared encoder is never modified


def test_a_checkpoint_of_the_base_weights_gives_the_briefly_trained_taskemb(tiny_encoder, tmp_path):
    """Only the encoder differs between the two variants: the same weights give the same vectors."""
    dataset = classification(12)
    same = write_checkpoint(tiny_encoder, tmp_path / "base.safetensors", noise=0.0, seed=0)
    brief = fisher_embedding(dataset, tiny_encoder, OPTIONS)
    tuned = fisher_embedding_from_checkpoint(dataset, tiny_encoder, same, OPTIONS)
    for c in brief.vectors:
        np.testing.assert_allclose(tuned.vectors[c], brief.vectors[c], rtol=1e-5, atol=1e-10)


def test_checkpoint_based_taskemb_rejects_what_it_cannot_do(tiny_encoder, tmp_path):
    dataset = classification(8)
    with pytest.raises(FileNotFoundError, match="no fine-tuned checkpoint"):
        fisher_embedding_from_checkpoint(dataset, tiny_encoder, tmp_path / "missing.safetensors", OPTIONS)
    path = write_checkpoint(tiny_encoder, tmp_path / "c.safetensors", noise=0.01, seed=3)
    with pytest.raises(ValueError, match="train_scope"):
        fisher_embedding_from_checkpoint(dataset, tiny_encoder, path, TaskEmbOptions(train_scope="full"))
    with pytest.raises(ValueError, match="build-taskemb-ft"):  # not a method a dataset alone can be embedded with
        embed(dataset, "taskemb_ft", tiny_encoder)
