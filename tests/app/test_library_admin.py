"""The shared library is changed with admin keys only (TASKRANK_ADMIN_KEYS) once keys are configured."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from library.settings import Settings

ALICE, BOB, ROOT = ({"Authorization": f"Bearer {key}"} for key in ("alice", "bob", "root"))
ROWS = {"rows": [{"text": f"sentence {i}", "label": "a" if i % 2 else "b"} for i in range(20)], "name": "mine"}


@pytest.fixture
def client(service_settings: Settings):
    settings = service_settings.model_copy(update={"api_keys": "alice,bob", "admin_keys": "root",
                                                   "per_key_ownership": True})
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def names(client) -> list[str]:
    return [t["name"] for t in client.get("/library/tasks", headers=ALICE).json()]


def test_adding_a_source_needs_an_admin_key(client):
    dataset = client.post("/datasets", json=ROWS, headers=BOB).json()
    request = {"dataset_id": dataset["id"], "name": "bobs_source"}
    refused = client.post("/library/tasks", json=request, headers=BOB)
    assert refused.status_code == 403 and "admin key (TASKRANK_ADMIN_KEYS)" in refused.json()["detail"]
    assert client.post("/library/tasks", json=request).status_code == 401
    mine = client.post("/datasets", json=ROWS, headers=ROOT).json()  # an admin key is an API key too
    added = client.post("/library/tasks", json={"dataset_id": mine["id"], "name": "shared_source"}, headers=ROOT)
    assert added.status_code == 202, added.text


def test_deleting_a_source_needs_an_admin_key(client):
    refused = client.delete("/library/tasks/sst2", headers=BOB)
    assert refused.status_code == 403 and "sst2" in names(client)
    assert client.delete("/library/tasks/sst2", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.delete("/library/tasks/sst2", headers=ROOT).status_code == 204
    assert "sst2" not in names(client)


def test_restoring_the_shipped_sources_needs_an_admin_key(client):
    assert client.delete("/library/tasks/sst2", headers=ROOT).status_code == 204
    assert client.post("/library/restore-default", headers=BOB).status_code == 403
    restored = client.post("/library/restore-default", headers=ROOT)
    assert restored.status_code == 200, restored.text
    body = restored.json()
    assert "sst2" in body["added"] and "rte" in body["skipped"] and "sst2" in names(client)
    again = client.post("/library/restore-default", headers=ROOT).json()
    assert again["added"] == [] and "sst2" in again["skipped"]


def test_without_keys_the_library_stays_open(service_settings):
    with TestClient(create_app(service_settings)) as client:
        assert client.delete("/library/tasks/sst2").status_code == 204
        assert "sst2" in client.post("/library/restore-default").json()["added"]


def test_the_openapi_document_says_who_may_write_the_library(client):
    paths = client.get("/openapi.json").json()["paths"]
    for path, method in (("/library/tasks", "post"), ("/library/tasks/{task}", "delete"),
                         ("/library/restore-default", "post")):
        assert {"401", "403"} <= set(paths[path][method]["responses"]), (path, method)
