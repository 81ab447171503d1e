"""Building, exporting and importing a library, with a tiny random BERT on small slices of ../shared/data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertModel

from embeddings.data import load_dataset
from embeddings.encoders import Encoder, default_model_path, encoder_from_model
from embeddings.options import TaskEmbOptions
from library.build import (
    BuildOptions,
    build_library,
    embed_target,
    library_options,
    task_folders,
)
from library.bundle import (
    MANIFEST,
    VECTORS,
    default_library_path,
    ensure_default_library,
    export_library,
    import_library,
)
from library.errors import LibraryError
from library.pipeline import rank_target
from library.ranking import SourceLibrary
from library.store import LibraryStore

SHARED_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
TASKS = {"rte": 40, "conll2000_chunk": 30, "squad_v1": 16}
OPTIONS = BuildOptions(max_rows=24, taskemb=TaskEmbOptions(train_steps=5, train_batch_size=8))


@pytest.fixture(scope="module")
def tiny_encoder() -> Encoder:
    """Random 2-layer, 32-wide BERT with the real uncased tokenizer: the model is not under test."""
    torch.manual_seed(0)
    config = BertConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    model = BertModel(config, add_pooling_layer=False)
    tokenizer = AutoTokenizer.from_pretrained(str(default_model_path()), local_files_only=True)
    return encoder_from_model(model, tokenizer, name="tiny-bert")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three task folders (classification, tagging, QA) with the first rows of their train split."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared task data not found at {SHARED_DATA.resolve()} (expected ../shared/data)")
    root = tmp_path_factory.mktemp("data")
    for name, rows in TASKS.items():
        folder = root / name
        folder.mkdir()
        shutil.copy(SHARED_DATA / name / "task.json", folder / "task.json")
        with (SHARED_DATA / name / "train.jsonl").open(encoding="utf-8") as fh:
            lines = [next(fh) for _ in range(rows)]
        (folder / "train.jsonl").write_text("".join(lines), encoding="utf-8")
    return root


@pytest.fixture
def store(tmp_path: Path):
    s = LibraryStore.from_data_dir(tmp_path / "lib")
    try:
        yield s
    finally:
        s.close()


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, data_dir: Path, tiny_encoder: Encoder):
    """One library built once for the read-only tests; (store, report)."""
    s = LibraryStore.from_data_dir(tmp_path_factory.mktemp("built"))
    report = build_library(data_dir, s, tiny_encoder, OPTIONS)
    yield s, report
    s.close()


def test_build_records_metadata_provenance_and_hashes(built, data_dir: Path, tiny_encoder: Encoder) -> None:
    store, report = built
    assert sorted(report.embedded) == sorted(TASKS) and report.skipped == []
    for name in TASKS:
        meta = json.loads((data_dir / name / "task.json").read_text())
        task = store.get_task(name)
        assert task is not None
        full = load_dataset(data_dir / name)
        assert task.task_type == meta["task_type"]
        assert task.description == meta["description"]
        assert task.num_train == meta["num_train"]  # the real size from task.json, not the slice
        assert task.num_dev == meta["num_dev"]
        assert task.data_hash == full.content_hash  # hash of the FULL train split: uploads are recognised
        prov = task.provenance
        assert prov["source"] == meta["source"] and prov["license_note"] == meta["license_note"]
        build = prov["build"]
        assert build["model_name"] == "tiny-bert" and build["model_hash"] == tiny_encoder.weights_hash
        assert build["rows_used"] == min(len(full), OPTIONS.max_rows) and build["rows_total"] == len(full)
        assert build["subsample_hash"] == full.subsample(OPTIONS.max_rows, OPTIONS.seed).content_hash
        assert build["subsample_hash"] != task.data_hash or len(full) <= OPTIONS.max_rows
        assert build["options"] == OPTIONS.identity() and build["options_hash"] == OPTIONS.options_hash
        assert build["seed"] == 13 and build["taskrank_version"] and build["seconds"]["total"] > 0
        methods = {}
        for e in store.task_embeddings(task.id):
            methods.setdefault(e.method, []).append(e.component)
        assert methods["textemb"] == ["text"] and methods["semb"] == ["sentence"]
        # 2 layers x (attention_output, output), plus cls_output except for tagging
        expected = 4 if meta["task_type"] == "sequence_labeling" else 5
        assert len(methods["taskemb"]) == expected
    (record,) = [b for b in store.builds() if b["kind"] == "build"]
    assert record["model_hash"] == tiny_encoder.weights_hash and len(record["tasks"]) == len(TASKS)
    assert record["options"] == OPTIONS.identity()
    assert library_options(store) == OPTIONS


def test_options_identity_round_trips_and_ignores_performance_knobs() -> None:
    assert BuildOptions.from_identity(OPTIONS.identity()) == OPTIONS
    assert OPTIONS.with_token_budget(65536).options_hash == OPTIONS.options_hash
    assert BuildOptions(max_rows=500).options_hash != BuildOptions().options_hash
    assert BuildOptions(methods=("taskemb", "textemb")).methods == ("textemb", "taskemb")
    with pytest.raises(ValueError):
        BuildOptions(methods=("fisher",))


def test_second_build_embeds_nothing(tmp_path: Path, data_dir: Path, tiny_encoder: Encoder, store) -> None:
    build_library(data_dir, store, tiny_encoder, OPTIONS, only=["rte", "conll2000_chunk"])
    version, count = store.version(), store.count_embeddings()
    again = build_library(data_dir, store, tiny_encoder, OPTIONS, only=["rte", "conll2000_chunk"])
    assert again.embedded == [] and sorted(again.skipped) == ["conll2000_chunk", "rte"]
    assert store.version() == version and store.count_embeddings() == count
    # Resumable: a missing task is embedded, the present one is not touched.
    store.remove_task("rte")
    resumed = build_library(data_dir, store, tiny_encoder, OPTIONS, only=["rte", "conll2000_chunk"])
    assert resumed.embedded == ["rte"] and resumed.skipped == ["conll2000_chunk"]
    # Other options re-embed (and replace) the task.
    other = BuildOptions(max_rows=10, taskemb=OPTIONS.taskemb)
    changed = build_library(data_dir, store, tiny_encoder, other, only=["rte"])
    assert [t.status for t in changed.tasks] == ["replaced"]
    assert store.get_task("rte").provenance["build"]["rows_used"] == 10


def test_changed_data_is_re_embedded(tmp_path: Path, data_dir: Path, tiny_encoder: Encoder, store) -> None:
    local = tmp_path / "data"
    shutil.copytree(data_dir / "rte", local / "rte")
    build_library(local, store, tiny_encoder, OPTIONS)
    old = store.get_task("rte").data_hash
    lines = (local / "rte" / "train.jsonl").read_text().splitlines(keepends=True)
    (local / "rte" / "train.jsonl").write_text("".join(lines[:-1]))
    report = build_library(local, store, tiny_encoder, OPTIONS)
    assert [t.status for t in report.tasks] == ["replaced"]
    assert store.get_task("rte").data_hash != old


def test_task_folder_selection(data_dir: Path) -> None:
    assert [p.name for p in task_folders(data_dir)] == sorted(TASKS)
    assert [p.name for p in task_folders(data_dir, ["squad_v1"])] == ["squad_v1"]
    assert [p.name for p in task_folders(data_dir / "rte")] == ["rte"]
    with pytest.raises(ValueError, match="unknown task"):
        task_folders(data_dir, ["nope"])
    with pytest.raises(ValueError, match="no such data directory"):
        task_folders(data_dir / "missing")


def test_embed_target_matches_the_library_embedding(built, data_dir: Path, tiny_encoder: Encoder) -> None:
    """A target embedded with the library's options gets exactly the source's vectors for the same data."""
    store, _ = built
    dataset = load_dataset(data_dir / "rte")
    targets = embed_target(dataset, tiny_encoder, ["ensemble"], library_options(store))
    assert list(targets) == ["textemb", "semb", "taskemb"]
    stored = {(e.method, e.component): e.vector for e in store.task_embeddings(store.get_task("rte").id)}
    for method, result in targets.items():
        assert result.num_examples == OPTIONS.max_rows
        for component, vec in result.vectors.items():
            np.testing.assert_allclose(vec, stored[(method, component)], rtol=1e-5, atol=1e-7)


def test_rank_dataset_excludes_the_targets_own_task(
    built, data_dir: Path, tiny_encoder: Encoder, tmp_path
) -> None:
    store, _ = built
    library = SourceLibrary(store, tmp_path / "idx")
    dataset = load_dataset(data_dir / "rte")
    ranking = rank_target(dataset, library, tiny_encoder, "ensemble", top_k=10, all_class=True)
    assert sorted(ranking.names()) == ["conll2000_chunk", "squad_v1"]
    in_class = rank_target(dataset, library, tiny_encoder, "textemb", top_k=10)
    assert in_class.sources == []  # rte is the only classification source, and it is the target


def test_rank_dataset_rejects_another_model(built, data_dir: Path, tmp_path) -> None:
    store, _ = built
    torch.manual_seed(1)
    config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    tokenizer = AutoTokenizer.from_pretrained(str(default_model_path()), local_files_only=True)
    other = encoder_from_model(BertModel(config, add_pooling_layer=False), tokenizer, name="tiny-bert")
    with pytest.raises(LibraryError, match="rebuild the library"):
        rank_target(load_dataset(data_dir / "rte"), SourceLibrary(store, tmp_path / "idx"), other, "textemb")


def test_empty_library_cannot_rank(store, data_dir: Path, tiny_encoder: Encoder, tmp_path) -> None:
    with pytest.raises(LibraryError, match="library is empty"):
        rank_target(
            load_dataset(data_dir / "rte"), SourceLibrary(store, tmp_path / "idx"), tiny_encoder, "textemb"
        )


def test_export_import_round_trips_vectors_exactly(built, tmp_path: Path, store) -> None:
    source, _ = built
    bundle = tmp_path / "bundle"
    report = export_library(source, bundle)
    assert report.tasks == len(TASKS) and (bundle / MANIFEST).is_file() and (bundle / VECTORS).is_file()
    manifest = json.loads((bundle / MANIFEST).read_text())
    assert manifest["library_version"] == source.version()
    assert manifest["models"] == [{"name": "tiny-bert", "hash": source.keys()[0].model_hash}]
    assert manifest["options"] == OPTIONS.identity() and manifest["build"]["kind"] == "build"
    assert "data_dir" not in manifest["build"]
    assert set(manifest["files"]) == {VECTORS}
    with np.load(bundle / VECTORS) as arrays:
        assert "rte/taskemb/cls_output" in arrays and arrays["rte/textemb/text"].dtype == np.float32

    imported = import_library(store, bundle)
    assert sorted(imported.added) == sorted(TASKS)
    for task in source.list_tasks():
        copy = store.get_task(task.name)
        assert (
            copy.task_type,
            copy.num_train,
            copy.num_dev,
            copy.data_hash,
            copy.description,
            copy.provenance,
        ) == (
            task.task_type,
            task.num_train,
            task.num_dev,
            task.data_hash,
            task.description,
            task.provenance,
        )
        a, b = source.task_embeddings(task.id), store.task_embeddings(copy.id)
        assert [(e.model_name, e.model_hash, e.method, e.component, e.options) for e in a] == [
            (e.model_name, e.model_hash, e.method, e.component, e.options) for e in b
        ]
        for x, y in zip(a, b, strict=True):
            assert x.vector.tobytes() == y.vector.tobytes()  # bit-exact
    assert library_options(store) == OPTIONS
    assert store.builds()[-1]["kind"] == "import"

    # Importing again changes nothing; a differing task is a conflict unless --replace.
    version = store.version()
    again = import_library(store, bundle)
    assert again.added == [] and sorted(again.skipped) == sorted(TASKS) and store.version() == version
    store.remove_task("rte")
    store.add_task("rte", "classification", num_train=1, data_hash="0" * 64)
    with pytest.raises(LibraryError, match="--replace"):
        import_library(store, bundle)
    assert import_library(store, bundle, replace=True).replaced == ["rte"]
    assert store.get_task("rte").data_hash == source.get_task("rte").data_hash


def test_import_rejects_corrupt_or_foreign_bundles(built, tmp_path: Path, store) -> None:
    source, _ = built
    bundle = tmp_path / "bundle"
    export_library(source, bundle)
    data = bytearray((bundle / VECTORS).read_bytes())
    data[-100] ^= 0xFF
    (bundle / VECTORS).write_bytes(bytes(data))
    with pytest.raises(LibraryError, match="sha256"):
        import_library(store, bundle)
    with pytest.raises(LibraryError, match="not a library bundle"):
        import_library(store, tmp_path / "nothing")
    assert store.list_tasks() == []
    with pytest.raises(LibraryError, match="empty"):
        export_library(store, tmp_path / "empty")


def test_ensure_default_library_imports_into_an_empty_store_only(built, tmp_path: Path, store) -> None:
    source, _ = built
    bundle = tmp_path / "bundle"
    export_library(source, bundle)
    report = ensure_default_library(store, bundle)
    assert report is not None and sorted(report.added) == sorted(TASKS)
    assert ensure_default_library(store, bundle) is None  # not empty any more: untouched
    store.remove_task("rte")
    assert ensure_default_library(store, bundle) is None  # a partial library is the user's, not refilled
    assert store.get_task("rte") is None
    with LibraryStore.from_data_dir(tmp_path / "other") as empty:
        assert ensure_default_library(empty, tmp_path / "no-bundle") is None
        assert empty.list_tasks() == []


def test_the_shipped_default_library_is_a_valid_bundle(tmp_path: Path) -> None:
    path = default_library_path()
    if not (path / MANIFEST).is_file():
        pytest.skip(f"no default library shipped at {path}")
    manifest = json.loads((path / MANIFEST).read_text())
    assert len(manifest["tasks"]) == 30
    # ESMs for all 30 sources (int8 rows, about 150 KB each) are most of it: a few MB, as the ESM issue asks
    assert sum(f.stat().st_size for f in path.iterdir()) < 8_000_000
    with LibraryStore.from_data_dir(tmp_path) as store:
        report = ensure_default_library(store)
        assert report is not None and len(report.added) == 30
        assert {t.task_type for t in store.list_tasks()} == {
            "classification",
            "regression",
            "sequence_labeling",
            "question_answering",
        }
        assert library_options(store) == BuildOptions()
