"""Per-source maps in bundles (int8 rows, older fp16 bundles still read) and LogME-based ranking of
sequence-labelling and question-answering targets, with a tiny random encoder (the model is not under test)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoTokenizer, BertConfig, BertModel

from embeddings.data import load_dataset
from embeddings.encoders import Encoder, default_model_path, encoder_from_model
from embeddings.esm import EmbeddingSpaceMap, esm_logme_scores, token_embeddings
from embeddings.logme import logme
from embeddings.options import TaskEmbOptions
from library.build import BuildOptions, build_library
from library.bundle import MANIFEST, MAPS, export_library, import_library
from library.errors import LibraryError
from library.pipeline import rank_target, ranking_options
from library.ranking import SourceLibrary
from library.store import LibraryStore

TASKS = {"rte": 30, "sst2": 30, "conll2000_chunk": 20, "squad_v1": 8}
OPTIONS = BuildOptions(max_rows=24, taskemb=TaskEmbOptions(train_steps=2, train_batch_size=8))
SOURCES_WITH_MAPS = ("rte", "sst2")


@pytest.fixture(scope="module")
def tiny_encoder() -> Encoder:
    torch.manual_seed(0)
    config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=512, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    tokenizer = AutoTokenizer.from_pretrained(str(default_model_path()), local_files_only=True)
    return encoder_from_model(BertModel(config, add_pooling_layer=False), tokenizer, name="tiny-bert")


def _slice(shared: Path, root: Path, name: str, rows: int) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    shutil.copy(shared / name / "task.json", folder / "task.json")
    with (shared / name / "train.jsonl").open(encoding="utf-8") as fh:
        (folder / "train.jsonl").write_text("".join(next(fh) for _ in range(rows)), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def library(tmp_path_factory, shared_data: Path, tiny_encoder: Encoder):
    """A tiny library with maps for two classification sources, and a checkpoint for each (for exact LogME)."""
    root = tmp_path_factory.mktemp("esm-maps")
    for name, rows in TASKS.items():
        _slice(shared_data, root / "data", name, rows)
    store = LibraryStore.from_data_dir(root / "lib")
    build_library(root / "data", store, tiny_encoder, OPTIONS)
    rng = np.random.default_rng(0)
    d = tiny_encoder.hidden_size
    (root / "checkpoints").mkdir()
    for i, name in enumerate(SOURCES_WITH_MAPS):
        task = store.get_task(name)
        assert task is not None
        weight = np.eye(d) * (1.0 + i) + 0.3 * rng.normal(size=(d, d))
        store.put_source_map(task.id, "esm", tiny_encoder.name, tiny_encoder.weights_hash, f"source-{name}.safetensors",
                             weight, 0.1 * rng.normal(size=d), {"r2_heldout": 0.5 + 0.1 * i, "rows": 10, "ridge": 1.0})
        state = {k: v.clone().contiguous() for k, v in tiny_encoder.model.state_dict().items()}
        key = next(k for k in state if k.endswith("layer.1.output.dense.weight"))
        state[key] += 0.3 * torch.randn(state[key].shape, generator=torch.Generator().manual_seed(i))
        save_file(state, str(root / "checkpoints" / f"source-{name}.safetensors"))
    yield store, root
    store.close()


def test_bundles_store_maps_as_int8_rows_and_read_old_fp16_bundles(library, tmp_path: Path) -> None:
    store, _ = library
    maps = {m.task_name: m for m in store.source_maps("esm")}
    bundle = tmp_path / "bundle"
    export_library(store, bundle)
    with np.load(bundle / MAPS) as arrays:
        keys = sorted(arrays.files)
        assert all(arrays[k].dtype == np.int8 for k in keys if k.endswith("/weight_int8"))
        assert not any(k.endswith("/weight") for k in keys)
        int8_bytes = sum(arrays[k].nbytes for k in keys)
    assert int8_bytes < 0.6 * sum(2 * (m.weight.size + m.bias.size) for m in maps.values())
    manifest = json.loads((bundle / MANIFEST).read_text())
    assert {e["encoding"] for e in manifest["maps"]} == {"int8_row"}

    with LibraryStore.from_data_dir(tmp_path / "fresh") as fresh:
        assert sorted(import_library(fresh, bundle).maps) == sorted(SOURCES_WITH_MAPS)
        for m in fresh.source_maps("esm"):
            original = maps[m.task_name]
            step = np.abs(original.weight).max(axis=1, keepdims=True) / 127
            assert np.all(np.abs(m.weight - original.weight) <= 0.6 * step + 1e-3 * np.abs(original.weight))
            assert not np.array_equal(m.weight, original.weight)  # really quantised
            assert np.array_equal(m.bias, original.bias) and m.info == original.info and m.checkpoint == original.checkpoint

    # A bundle written before int8 maps: fp16 `weight` arrays and no `encoding`; read exactly as before.
    old = tmp_path / "old"
    shutil.copytree(bundle, old)
    manifest = json.loads((old / MANIFEST).read_text())
    arrays = {}
    for entry in manifest["maps"]:
        entry.pop("encoding")
        arrays[f"{entry['array']}/weight"] = maps[entry["task"]].weight.astype("<f2")
        arrays[f"{entry['array']}/bias"] = maps[entry["task"]].bias.astype("<f2")
    np.savez(old / MAPS, **arrays)
    import hashlib

    manifest["files"][MAPS] = hashlib.sha256((old / MAPS).read_bytes()).hexdigest()
    (old / MANIFEST).write_text(json.dumps(manifest))
    with LibraryStore.from_data_dir(tmp_path / "from-old") as fresh:
        assert sorted(import_library(fresh, old).maps) == sorted(SOURCES_WITH_MAPS)
        for m in fresh.source_maps("esm"):
            assert np.array_equal(m.weight, maps[m.task_name].weight)  # fp16 in, fp16 out: bit-identical


def _tagging_target(shared_data: Path, tmp_path: Path):
    return load_dataset(_slice(shared_data, tmp_path, "ud_ewt_pos", 40))


def test_esm_logme_ranks_classification_sources_for_a_tagging_target_on_tokens(library, shared_data, tmp_path,
                                                                               tiny_encoder) -> None:
    store, root = library
    target = _tagging_target(shared_data, tmp_path)
    lib = SourceLibrary(store, root / "indexes")
    ranking = rank_target(target, lib, tiny_encoder, "esm_logme", top_k=5)
    assert ranking.target.task_type == "sequence_labeling"
    assert sorted(ranking.names()) == sorted(SOURCES_WITH_MAPS)  # classification sources, across task types
    scores = [s.score for s in ranking.sources]
    assert scores == sorted(scores, reverse=True) and len(set(scores)) == 2

    options = ranking_options(store, tiny_encoder).embed_options()
    sample = target.subsample(OPTIONS.max_rows, OPTIONS.seed)
    rows, tags = token_embeddings(sample, tiny_encoder, None, options)
    assert len(rows) > sum(1 for _ in sample.examples)  # scored on tokens, not sentences
    maps = store.source_maps("esm")
    expected = esm_logme_scores(rows, tags, [EmbeddingSpaceMap(weight=m.weight, bias=m.bias, r2_heldout=0.0, rows=0,
                                                               ridge=0.0) for m in maps])
    by_name = {s.name: s.score for s in ranking.sources}
    np.testing.assert_allclose([by_name[m.task_name] for m in maps], expected, rtol=1e-9)

    exact = rank_target(target, lib, tiny_encoder, "logme", top_k=5, checkpoint_dirs=[root / "checkpoints"])
    from safetensors.torch import load_file

    for s in exact.sources:  # one forward pass of the token sample per fine-tuned encoder
        state = load_file(str(root / "checkpoints" / f"source-{s.name}.safetensors"))
        features, labels = token_embeddings(sample, tiny_encoder, state, options)
        assert s.score == pytest.approx(logme(features, labels), rel=1e-9)


def test_question_answering_targets_get_a_clear_error(library, shared_data, tmp_path, tiny_encoder) -> None:
    store, root = library
    squad = load_dataset(_slice(shared_data, tmp_path, "squad_v2", 10))
    for method in ("esm_logme", "logme"):
        with pytest.raises(LibraryError, match="not supported for question answering.*textemb, semb or taskemb"):
            rank_target(squad, SourceLibrary(store, root / "indexes"), tiny_encoder, method)


def test_exact_logme_keeps_its_evidence_and_ranks_from_it_without_checkpoints(library, shared_data, tmp_path,
                                                                              tiny_encoder) -> None:
    from library.logme_evidence import EvidenceStore

    store, root = library
    target = _tagging_target(shared_data, tmp_path)
    lib = SourceLibrary(store, root / "indexes")
    path = tmp_path / "evidence.jsonl"
    first = rank_target(target, lib, tiny_encoder, "logme", top_k=5, checkpoint_dirs=[root / "checkpoints"],
                        evidence=EvidenceStore(path))
    lines = path.read_text().splitlines()
    assert len(lines) == len(SOURCES_WITH_MAPS)  # one forward pass per source, each value kept
    assert {json.loads(line)["source"] for line in lines} == set(SOURCES_WITH_MAPS)

    shipped = tmp_path / "shipped.jsonl"  # read-only evidence (the shipped file) serves a machine with no checkpoints
    shipped.write_text(path.read_text() + "{torn line\n")
    reread = EvidenceStore(tmp_path / "here.jsonl", shipped=(shipped,))
    again = rank_target(target, lib, tiny_encoder, "logme", top_k=5, checkpoint_dirs=[], evidence=reread)
    assert [(s.name, s.score) for s in again.sources] == [(s.name, s.score) for s in first.sources]
    assert reread.hits == len(SOURCES_WITH_MAPS) and not (tmp_path / "here.jsonl").exists()

    kept = next(line for line in lines if json.loads(line)["source"] == "rte")
    partial = EvidenceStore(None, shipped=(tmp_path / "rte.jsonl",))
    (tmp_path / "rte.jsonl").write_text(kept + "\n")
    ranking = rank_target(target, lib, tiny_encoder, "logme", top_k=5, checkpoint_dirs=[], evidence=partial)
    assert ranking.names() == ["rte"]
    assert any("sst2" in note and "no cached checkpoint or recorded evidence" in note for note in ranking.notes)

    with pytest.raises(LibraryError, match="exact LogME needs the sources' fine-tuned checkpoints"):
        rank_target(target, lib, tiny_encoder, "logme", checkpoint_dirs=[], evidence=EvidenceStore(None))


def test_the_default_falls_back_to_the_incumbent_where_esm_logme_cannot_rank(library, tmp_path) -> None:
    from library.default_choice import INCUMBENT, obstacle, resolve
    from library.methods import RANKING_METHODS

    store, _ = library
    esm_logme = RANKING_METHODS.get("esm_logme")
    assert obstacle(esm_logme, "classification", store) is None
    assert obstacle(esm_logme, "sequence_labeling", store) is None
    assert "question answering" in (obstacle(esm_logme, "question_answering", store) or "")
    assert obstacle(RANKING_METHODS.get("ensemble"), "question_answering", store) is None
    assert "taskemb_ft" in (obstacle(RANKING_METHODS.get("taskemb_ft"), "classification", store) or "")
    with LibraryStore.from_data_dir(tmp_path / "no-maps") as bare:
        assert "no esm maps" in (obstacle(esm_logme, "classification", bare) or "")

    def blocked(task_type: str) -> str | None:
        return obstacle(esm_logme, task_type, store)

    assert resolve("esm_logme", blocked("classification")) == ("esm_logme", None)
    method, note = resolve("esm_logme", blocked("question_answering"))
    assert method == INCUMBENT and note is not None and "esm_logme, cannot rank this target" in note
