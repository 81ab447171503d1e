"""ESM-LogME and LogME through the service: ESMs fitted from real (tiny-model) source fine-tunings in
the practitioner regime, stored with the library, exported and imported, and ranked with over HTTP."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.cli import main
from app.main import create_app
from embeddings.data import LoadLimits, load_dataset
from embeddings.encoders import load_encoder
from embeddings.transfer import TransferOptions, source_encoder_state
from library.bundle import MAPS, export_library, import_library
from library.settings import get_settings
from library.store import LibraryStore
from tests.app.conftest import write_csv_slice
from tests.app.test_api import run_queued_jobs

SOURCES = ("rte", "sst2", "sentence_polarity")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory, tiny_model_dir: Path, shared_data: Path) -> Path:
    """The tiny model fine-tuned on each source in the practitioner regime (what the matrix trains)."""
    folder = tmp_path_factory.mktemp("checkpoints")
    encoder = load_encoder(str(tiny_model_dir), "cpu")
    limits = LoadLimits(max_rows=10**7)
    for name in SOURCES:
        source = load_dataset(shared_data / name, limits=limits)
        dev = load_dataset(shared_data / name, split="dev", limits=limits)
        source_encoder_state(source, encoder, TransferOptions(), folder, dev=dev)
    return folder


@pytest.fixture
def esm_settings(service_settings, tiny_checkpoints: Path, shared_data: Path, monkeypatch):
    shutil.copytree(tiny_checkpoints, service_settings.paths.checkpoints)
    for key, value in {"TASKRANK_DATA_DIR": str(service_settings.data_dir), "TASKRANK_MODEL": service_settings.model,
                       "TASKRANK_DEVICE": "cpu", "TASKRANK_SHARED_DATA_DIR": str(shared_data)}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("TASKRANK_DATABASE_URL", raising=False)
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


def test_build_esm_rank_and_round_trip(esm_settings, shared_data, tmp_path, capsys):
    assert main(["library", "build-esm"]) == 0
    captured = capsys.readouterr()
    for name in SOURCES:
        assert f"{name} " in captured.out and "held-out R^2" in captured.out
    assert "stsb" in captured.err and "bench/transfer_matrix.py" in captured.err  # no checkpoint: says how
    assert "conll2003_ner" in captured.err  # a tagging source gets an ESM too, once its checkpoint is trained
    store = LibraryStore(esm_settings.resolved_database_url)
    maps = store.source_maps("esm")
    assert sorted(m.task_name for m in maps) == sorted(SOURCES)
    assert all(np.isfinite(m.info["r2_heldout"]) and m.info["r2_heldout"] > 0.5 for m in maps)
    assert all(m.weight.shape == (32, 32) and m.checkpoint.startswith("source-") for m in maps)
    assert main(["library", "build-esm"]) == 0  # idempotent: nothing refitted
    assert "unchanged" in capsys.readouterr().out

    exported = export_library(store, tmp_path / "bundle")
    assert (tmp_path / "bundle" / MAPS).is_file() and exported.bytes > 0
    fresh = LibraryStore(f"sqlite:///{tmp_path / 'fresh.db'}")
    report = import_library(fresh, tmp_path / "bundle")
    assert sorted(report.maps) == sorted(SOURCES)
    again = {m.task_name: m for m in fresh.source_maps("esm")}
    for m in maps:  # int8 rows in the bundle: each weight within about half its row's step; bias and info exact
        step = np.abs(m.weight).max(axis=1, keepdims=True) / 127
        assert np.all(np.abs(again[m.task_name].weight - m.weight) <= 0.6 * step + 1e-3 * np.abs(m.weight))
        assert np.array_equal(again[m.task_name].bias, m.bias) and again[m.task_name].info == m.info
    fresh.close()
    store.close()

    with TestClient(create_app(esm_settings)) as client:
        csv_path = write_csv_slice(shared_data, "sst2", tmp_path / "sst2.csv", 60)
        dataset = client.post("/datasets", files={"file": ("sst2.csv", csv_path.read_bytes())}).json()
        rankings = {}
        for method in ("esm_logme", "logme"):
            submitted = client.post("/rankings", json={"dataset_id": dataset["id"], "method": method, "top_k": 5})
            assert submitted.status_code == 202, submitted.text
            run_queued_jobs(esm_settings)
            ranking = client.get(f"/rankings/{submitted.json()['id']}").json()
            assert ranking["state"] == "succeeded", ranking["error"]
            rankings[method] = ranking["sources"]
        esm = rankings["esm_logme"]
        assert {s["name"] for s in esm} == set(SOURCES)  # in-class sources with an ESM
        assert all(np.isfinite(s["score"]) and "esm_r2" in s["details"]["esm_logme"] for s in esm)
        assert [s["score"] for s in esm] == sorted((s["score"] for s in esm), reverse=True)
        assert {s["name"] for s in rankings["logme"]} == set(SOURCES)
        evidence = esm_settings.paths.embeddings / "logme_evidence.jsonl"  # each forward pass's value is kept
        assert len(evidence.read_text().splitlines()) == len(SOURCES)
        page = client.get(f"/rankings/{submitted.json()['id']}/view").text
        assert "LogME" in page

        stsb = write_csv_slice(shared_data, "stsb", tmp_path / "stsb.csv", 30)
        regression = client.post("/datasets", files={"file": ("stsb.csv", stsb.read_bytes())}).json()
        failed = client.post("/rankings", json={"dataset_id": regression["id"], "method": "esm_logme"}).json()
        run_queued_jobs(esm_settings)
        job = client.get(f"/jobs/{failed['job_id']}").json()
        assert job["state"] == "failed" and "taskrank library build-esm" in job["error"]
