"""One ranking pipeline: the CLI and the worker rank the same input identically through
`library.pipeline.rank_target`, and the target-embedding cache answers a repeated or sibling request."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from app.cli import main
from app.main import create_app
from library.settings import get_settings
from tests.app.conftest import write_csv_slice
from tests.app.test_api import run_queued_jobs


@pytest.fixture
def cli_env(service_settings, monkeypatch: pytest.MonkeyPatch):
    """The CLI on the service's data directory, model and library."""
    monkeypatch.setenv("TASKRANK_DATA_DIR", str(service_settings.data_dir))
    monkeypatch.setenv("TASKRANK_MODEL", str(service_settings.model))
    monkeypatch.setenv("TASKRANK_DEVICE", "cpu")
    monkeypatch.delenv("TASKRANK_DATABASE_URL", raising=False)
    get_settings.cache_clear()
    yield service_settings
    get_settings.cache_clear()


def _cli_rank(capsys, path, method: str) -> tuple[list[dict], str]:
    assert main(["rank", str(path), "--method", method, "--top", "4", "--json"]) == 0
    captured = capsys.readouterr()
    return json.loads(captured.out)["sources"], captured.err


def test_cli_and_worker_rank_identically_and_the_cache_answers_repeats(cli_env, shared_data, tmp_path, capsys):
    csv_path = write_csv_slice(shared_data, "sst2", tmp_path / "sst2.csv", 60)  # over the library's 40-row cap
    embedded = cli_env.paths.embeddings
    first, err = _cli_rank(capsys, csv_path, "textemb")
    assert "from the cache" not in err
    cached_files = sorted(embedded.glob("*.npz"))
    assert len(cached_files) == 2  # the text pass computed TextEmb and SEmb: both are cached

    again, err = _cli_rank(capsys, csv_path, "textemb")
    assert "from the cache" in err and again == first
    sibling, err = _cli_rank(capsys, csv_path, "semb")  # SEmb after TextEmb: not embedded again
    assert "from the cache" in err and sorted(embedded.glob("*.npz")) == cached_files

    with TestClient(create_app(cli_env)) as client:  # the worker, on the same data
        dataset = client.post("/datasets", files={"file": ("sst2.csv", csv_path.read_bytes())}).json()
        for method, expected in (("textemb", first), ("semb", sibling)):
            submitted = client.post("/rankings", json={"dataset_id": dataset["id"], "method": method, "top_k": 4})
            run_queued_jobs(cli_env)
            ranking = client.get(f"/rankings/{submitted.json()['id']}").json()
            assert ranking["state"] == "succeeded", ranking["error"]
            assert ranking["sources"] == expected
    assert sorted(embedded.glob("*.npz")) == cached_files  # the worker read the CLI's cache
