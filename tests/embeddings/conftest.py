"""Fixtures for the ML core: a tiny random BERT (fast) and the real bundled encoder (integration)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertModel

from embeddings.encoders import Encoder, default_model_path, encoder_from_model, load_encoder


@pytest.fixture(scope="session")
def tiny_encoder() -> Encoder:
    """Random 2-layer, 32-wide BERT with the real uncased tokenizer: the model is not under test."""
    torch.manual_seed(0)
    config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=512, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = BertModel(config, add_pooling_layer=False)
    tokenizer = AutoTokenizer.from_pretrained(str(default_model_path()), local_files_only=True)
    return encoder_from_model(model, tokenizer, name="tiny-bert")


@pytest.fixture(scope="session")
def real_encoder() -> Encoder:
    return load_encoder("default", "cpu")
