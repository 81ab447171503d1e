"""A ranking request without a method gets the service's default for that target: the method the shipped
matrix chose, or, where it cannot rank the target (here: a library without ESM maps), the incumbent, with
a note saying why. An explicit request for the same method still fails with the clear error."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

import library.methods
from app.main import create_app
from library.default_choice import INCUMBENT
from tests.app.conftest import write_csv_slice
from tests.app.test_api import run_queued_jobs


@pytest.fixture
def esm_logme_default(monkeypatch: pytest.MonkeyPatch) -> str:
    """The default as the shipped matrix may choose it (read where a request is answered)."""
    monkeypatch.setattr(library.methods, "DEFAULT_METHOD", "esm_logme")
    return "esm_logme"


def test_a_request_without_a_method_falls_back_where_the_default_cannot_rank(service_settings, shared_data, tmp_path,
                                                                           esm_logme_default: str) -> None:
    csv_path = write_csv_slice(shared_data, "sst2", tmp_path / "sst2.csv", 30)
    with TestClient(create_app(service_settings)) as client:
        ranker = client.get("/ranker").json()
        assert ranker["default_method"] == esm_logme_default and "shipped transfer matrix" in ranker["default_reason"]
        dataset = client.post("/datasets", files={"file": ("sst2.csv", csv_path.read_bytes())}).json()
        submitted = client.post("/rankings", json={"dataset_id": dataset["id"], "top_k": 3})
        assert submitted.status_code == 202, submitted.text
        assert submitted.json()["method"] == INCUMBENT
        run_queued_jobs(service_settings)
        ranking = client.get(f"/rankings/{submitted.json()['id']}").json()
        assert ranking["state"] == "succeeded", ranking["error"]
        assert len(ranking["sources"]) == 3
        assert "the default method, esm_logme, cannot rank this target" in ranking["notes"][0]
        assert "no esm maps" in ranking["notes"][0]
        page = client.get(f"/rankings/{ranking['id']}/view").text
        assert 'id="ranking-notes"' in page and "cannot rank this target" in page

        explicit = client.post("/rankings", json={"dataset_id": dataset["id"], "method": esm_logme_default})
        run_queued_jobs(service_settings)
        failed = client.get(f"/rankings/{explicit.json()['id']}").json()
        assert failed["state"] == "failed" and "embedding space map" in failed["error"]
