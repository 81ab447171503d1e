"""The checkpoint-based TaskEmb variant in the library: built from cached source checkpoints, stored beside
the old TaskEmb, selectable as a ranking method, shipped in a bundle, and clear about what is missing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoTokenizer, BertConfig, BertModel

from embeddings.data import LoadLimits, load_dataset
from embeddings.encoders import Encoder, default_model_path, encoder_from_model
from embeddings.options import TaskEmbOptions
from embeddings.transfer import TransferOptions, source_checkpoint_path
from library.build import BuildOptions, build_library, methods_for
from library.bundle import (
    export_library,
    import_library,
    import_method_embeddings,
    read_manifest,
    write_bundle_embeddings,
)
from library.errors import LibraryError
from library.evaluation import Transfer, TransferTable
from library.methods import RANKING_METHODS
from library.ranking import SourceLibrary
from library.service import evaluate_transfer_table, stored_targets
from library.store import LibraryStore
from library.taskemb_ft import TASKEMB_FT, build_finetuned_taskembs

SHARED_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
TASKS = {"rte": 30, "sst2": 30, "cola": 30, "conll2000_chunk": 20}
WITH_CHECKPOINT = ("rte", "sst2")
OPTIONS = BuildOptions(max_rows=16, taskemb=TaskEmbOptions(train_steps=4, train_batch_size=8))


@pytest.fixture(scope="module")
def tiny_encoder() -> Encoder:
    torch.manual_seed(0)
    config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    tokenizer = AutoTokenizer.from_pretrained(str(default_model_path()), local_files_only=True)
    return encoder_from_model(BertModel(config, add_pooling_layer=False), tokenizer, name="tiny-bert")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared task data not found at {SHARED_DATA.resolve()} (expected ../shared/data)")
    root = tmp_path_factory.mktemp("data")
    for name, rows in TASKS.items():
        (root / name).mkdir()
        shutil.copy(SHARED_DATA / name / "task.json", root / name / "task.json")
        with (SHARED_DATA / name / "train.jsonl").open(encoding="utf-8") as fh:
            (root / name / "train.jsonl").write_text("".join(next(fh) for _ in range(rows)), encoding="utf-8")
    return root


def fake_checkpoints(data_dir: Path, encoder: Encoder, folder: Path, names: tuple[str, ...] = WITH_CHECKPOINT) -> Path:
    """Where the transfer cache would put each source's checkpoint, a perturbed copy of the encoder
    (no training: the library code only has to find, hash and load it)."""
    folder.mkdir(parents=True, exist_ok=True)
    for seed, name in enumerate(names):
        source = load_dataset(data_dir / name, limits=LoadLimits(max_rows=10**6))
        path = source_checkpoint_path(source, encoder, TransferOptions(), folder)
        generator = torch.Generator().manual_seed(seed)
        save_file({k: (v + 0.05 * torch.randn(v.shape, generator=generator)).contiguous()
                   for k, v in encoder.model.state_dict().items()}, str(path))
        path.with_suffix(".json").write_text(json.dumps({"source": name, "rows": 30, "options": {"epochs": 2.0}}))
    return folder


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, data_dir: Path, tiny_encoder: Encoder):
    root = tmp_path_factory.mktemp("lib")
    store = LibraryStore.from_data_dir(root)
    build_library(data_dir, store, tiny_encoder, OPTIONS)
    checkpoints = fake_checkpoints(data_dir, tiny_encoder, root / "checkpoints")
    report = build_finetuned_taskembs(store, data_dir, tiny_encoder, [checkpoints], OPTIONS)
    yield store, report, checkpoints, root
    store.close()


def test_the_variant_is_built_from_checkpoints_and_stored_beside_the_old_taskemb(built, data_dir, tiny_encoder):
    store, report, checkpoints, _ = built
    assert sorted(report.built) == sorted(WITH_CHECKPOINT)
    assert report.missing_checkpoint == ["cola"] and report.unsupported == ["conll2000_chunk"]
    for name in WITH_CHECKPOINT:
        task = store.get_task(name)
        assert task is not None
        by_method: dict[str, dict[str, np.ndarray]] = {}
        options = {}
        for e in store.task_embeddings(task.id):
            by_method.setdefault(e.method, {})[e.component] = e.vector
            options[e.method] = e.options
        assert set(by_method[TASKEMB_FT]) == set(by_method["taskemb"])  # same layout as the old TaskEmb
        assert not np.allclose(by_method[TASKEMB_FT]["cls_output"], by_method["taskemb"]["cls_output"])
        assert options[TASKEMB_FT]["encoder_state"] == "source_checkpoint"
        assert options[TASKEMB_FT]["checkpoint"] == report.built[name]["checkpoint"]
        assert options[TASKEMB_FT]["train_steps"] == options["taskemb"]["train_steps"] == 4
    again = build_finetuned_taskembs(store, data_dir, tiny_encoder, [checkpoints], OPTIONS)
    assert again.built == {} and sorted(again.kept) == sorted(WITH_CHECKPOINT)  # idempotent


def test_the_variant_is_a_ranking_method_that_never_mixes_in_old_vectors(built, tmp_path):
    store, _, _, _ = built
    assert TASKEMB_FT in RANKING_METHODS and "taskemb" in RANKING_METHODS  # the old one stays
    assert methods_for(TASKEMB_FT) == ("taskemb",)  # a target is embedded the usual way
    assert TASKEMB_FT not in BuildOptions().methods  # the library's build options are unchanged
    library = SourceLibrary(store, tmp_path / "idx")
    target = stored_targets(store, store.get_task("sst2"))  # type: ignore[arg-type]
    ranking = library.rank({"taskemb": target["taskemb"]}, TASKEMB_FT, top_k=10)
    assert ranking.names() == ["rte"]  # cola has no checkpoint-based vector: left out ...
    assert len(ranking.notes) == 1 and "cola" in ranking.notes[0]  # ... and named
    assert "build-taskemb-ft" in ranking.notes[0]
    old = library.rank({"taskemb": target["taskemb"]}, "taskemb", top_k=10)
    assert sorted(old.names()) == ["cola", "rte"] and old.notes == []

    only_missing = library.rank({"taskemb": stored_targets(store, store.get_task("rte"))["taskemb"]},  # type: ignore[arg-type]
                                TASKEMB_FT, top_k=10)
    assert only_missing.names() == ["sst2"]

    # an evaluation scores it, and says which measured sources it could not rank (counted last)
    table = TransferTable({"sst2": {"rte": Transfer(60.0, 50.0, 1), "cola": Transfer(55.0, 50.0, 1)}})
    result = evaluate_transfer_table(library, table, ["taskemb", TASKEMB_FT])
    assert set(result["methods"]) >= {"taskemb", TASKEMB_FT} and result["skipped_methods"] == {}
    assert "cola" in result["method_notes"][TASKEMB_FT]["sst2"] and "taskemb" not in result["method_notes"]
    assert result["unscored_sources"] == {TASKEMB_FT: {"sst2": ["cola"]}}


def test_a_missing_checkpoint_gives_a_clear_message(tmp_path, data_dir, tiny_encoder):
    store = LibraryStore.from_data_dir(tmp_path / "lib")
    build_library(data_dir, store, tiny_encoder, OPTIONS, only=["rte", "cola"])
    report = build_finetuned_taskembs(store, data_dir, tiny_encoder, [tmp_path / "no-checkpoints"], OPTIONS)
    assert report.built == {} and sorted(report.missing_checkpoint) == ["cola", "rte"]
    library = SourceLibrary(store, tmp_path / "idx")
    target = stored_targets(store, store.get_task("rte"))["taskemb"]  # type: ignore[arg-type]
    with pytest.raises(LibraryError, match=r"no library source has a checkpoint-based TaskEmb.*build-taskemb-ft"):
        library.rank({"taskemb": target}, TASKEMB_FT)
    with pytest.raises(LibraryError, match="no source task"):
        build_finetuned_taskembs(store, data_dir, tiny_encoder, [tmp_path], OPTIONS, only=["nope"])
    # an evaluation skips the method with the reason rather than failing
    table = TransferTable({"rte": {"cola": Transfer(60.0, 50.0, 1)}})
    result = evaluate_transfer_table(library, table, ["taskemb", TASKEMB_FT])
    assert TASKEMB_FT in result["skipped_methods"] and "build-taskemb-ft" in result["skipped_methods"][TASKEMB_FT]
    assert "taskemb" in result["methods"]
    store.close()


def test_the_variant_ships_in_a_bundle_and_reaches_stores_that_imported_it_before(built, tmp_path):
    store, _, _, _ = built
    exported = export_library(store, tmp_path / "full")
    assert exported.tasks == len(TASKS)
    fresh = LibraryStore(f"sqlite:///{tmp_path / 'fresh.db'}")
    import_library(fresh, tmp_path / "full")
    for name in WITH_CHECKPOINT:
        original = {e.component: e.vector for e in store.task_embeddings(store.get_task(name).id)  # type: ignore[union-attr]
                    if e.method == TASKEMB_FT}
        copied = {e.component: e.vector for e in fresh.task_embeddings(fresh.get_task(name).id)  # type: ignore[union-attr]
                  if e.method == TASKEMB_FT}
        assert set(copied) == set(original) and all(np.array_equal(copied[c], original[c]) for c in original)
    fresh.close()

    # a bundle exported without the variant, shipped with it later (`build-taskemb-ft --bundle`)
    bundle = tmp_path / "old-bundle"
    shutil.copytree(tmp_path / "full", bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    for t in manifest["tasks"]:
        t["embeddings"] = [e for e in t["embeddings"] if e["method"] != TASKEMB_FT]
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    pre = LibraryStore(f"sqlite:///{tmp_path / 'pre.db'}")
    import_library(pre, bundle)
    assert not any(k.method == TASKEMB_FT for k in pre.keys())
    assert sorted(write_bundle_embeddings(store, bundle, TASKEMB_FT)) == sorted(WITH_CHECKPOINT)
    read_manifest(bundle)  # checksums still valid
    assert sorted(import_method_embeddings(pre, bundle, TASKEMB_FT)) == sorted(WITH_CHECKPOINT)
    assert import_method_embeddings(pre, bundle, TASKEMB_FT) == []  # never twice, never over the operator's
    for name in WITH_CHECKPOINT:  # vectors and options (written once per task in the bundle) come back whole
        original = [(e.component, e.options, e.vector) for e in store.task_embeddings(store.get_task(name).id)  # type: ignore[union-attr]
                    if e.method == TASKEMB_FT]
        shipped = [(e.component, e.options, e.vector) for e in pre.task_embeddings(pre.get_task(name).id)  # type: ignore[union-attr]
                   if e.method == TASKEMB_FT]
        assert [(c, o) for c, o, _ in shipped] == [(c, o) for c, o, _ in original]
        assert all(np.array_equal(a, b) for (_, _, a), (_, _, b) in zip(shipped, original, strict=True))
    pre.close()


def test_the_shipped_library_carries_the_variant_for_its_trained_sources(tmp_path):
    from library.bundle import MANIFEST, default_library_path, ensure_default_library

    path = default_library_path()
    if not (path / MANIFEST).is_file():
        pytest.skip(f"no default library shipped at {path}")
    shipped = {t["name"] for t in read_manifest(path)["tasks"] if any(e["method"] == TASKEMB_FT for e in t["embeddings"])}
    if not shipped:
        pytest.skip("the shipped library has no checkpoint-based TaskEmb yet")
    with LibraryStore.from_data_dir(tmp_path) as store:
        ensure_default_library(store)
        for task in store.list_tasks():
            by_method: dict[str, set[str]] = {}
            for e in store.task_embeddings(task.id):
                by_method.setdefault(e.method, set()).add(e.component)
                if e.method == TASKEMB_FT:
                    assert e.options["encoder_state"] == "source_checkpoint" and e.options["checkpoint_sha256"]
            assert (TASKEMB_FT in by_method) == (task.name in shipped)
            if task.name in shipped:
                assert by_method[TASKEMB_FT] == by_method["taskemb"]
