"""Service fixtures: a tiny saved BERT (so workers load a real model directory fast), a small library
built from ../shared/data with it, and settings pointing everything at a temporary data directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertModel

from embeddings.data import load_dataset
from embeddings.encoders import default_model_path, load_encoder
from embeddings.options import EmbedOptions, TaskEmbOptions
from library.build import BuildOptions, build_library
from library.settings import Settings
from library.store import LibraryStore

LIBRARY_TASKS = ("rte", "sst2", "sentence_polarity", "stsb", "conll2003_ner")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-bert")
    config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    BertModel(config, add_pooling_layer=False).save_pretrained(path)
    AutoTokenizer.from_pretrained(str(default_model_path()), local_files_only=True).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_library_db(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, shared_data: Path) -> Path:
    """A 5-task library (40 rows each) embedded with the tiny model; copied per test."""
    folder = tmp_path_factory.mktemp("tiny-library")
    store = LibraryStore(f"sqlite:///{folder / 'taskrank.db'}")
    encoder = load_encoder(str(tiny_model_dir), "cpu")
    options = BuildOptions(max_rows=40, embed=EmbedOptions(max_length=64),
                           taskemb=TaskEmbOptions(max_length=64, train_steps=2, train_batch_size=8))
    build_library(shared_data, store, encoder, options, only=LIBRARY_TASKS)
    store.close()
    return folder / "taskrank.db"


@pytest.fixture
def service_settings(tmp_path: Path, tiny_model_dir: Path, tiny_library_db: Path) -> Settings:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "taskrank.db").write_bytes(tiny_library_db.read_bytes())
    return Settings(data_dir=data_dir, model=str(tiny_model_dir), device="cpu", max_upload_bytes=200_000)


def write_csv_slice(shared_data: Path, task: str, path: Path, rows: int) -> Path:
    """A CSV (GLUE column names) made from the first rows of a ../shared/data task."""
    import csv

    dataset = load_dataset(shared_data / task)
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        pair = dataset.is_pair
        writer.writerow(["sentence1", "sentence2", "label"] if pair else ["sentence", "label"])
        for row in list(dataset.to_rows())[:rows]:
            writer.writerow([row["text"], row["text_pair"], row["label"]] if pair else [row["text"], row["label"]])
    return path


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.fixture(scope="session")
def slow_library(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> tuple[Path, Path]:
    """(model dir, library db) for fault tests: a wider random BERT and 2 sources of 3,000 rows, so a
    ranking job runs for seconds and can be killed or cancelled mid-way."""
    torch.manual_seed(1)
    model_dir = tmp_path_factory.mktemp("medium-bert")
    config = BertConfig(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, intermediate_size=512)
    BertModel(config, add_pooling_layer=False).save_pretrained(model_dir)
    AutoTokenizer.from_pretrained(str(default_model_path()), local_files_only=True).save_pretrained(model_dir)
    folder = tmp_path_factory.mktemp("slow-library")
    store = LibraryStore(f"sqlite:///{folder / 'taskrank.db'}")
    options = BuildOptions(max_rows=3000, methods=("textemb", "semb"), embed=EmbedOptions(max_length=128))
    build_library(shared_data, store, load_encoder(str(model_dir), "cpu"), options, only=("sst2", "rte"))
    store.close()
    return model_dir, folder / "taskrank.db"
