"""The REST API with the real app and a real job store; jobs are run by the worker's own functions."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from library.jobs import JobStore
from library.service import LibraryService
from library.settings import Settings
from tests.app.conftest import write_csv_slice
from worker import runner
from worker.job_kinds import JOB_KINDS


@pytest.fixture
def client(service_settings: Settings):
    with TestClient(create_app(service_settings)) as test_client:
        yield test_client


def run_queued_jobs(settings: Settings) -> int:
    """Do what a worker does with every queued job (the e2e tests use real worker processes)."""
    store = JobStore(settings.resolved_database_url)
    service = LibraryService.from_settings(settings)
    ran = 0
    for job in store.unfinished_jobs():
        JOB_KINDS[job.kind].handler(job.id, store, service, settings)
        ran += 1
    service.close()
    store.close()
    return ran


def stored_files(settings: Settings) -> list[Path]:
    folder = settings.data_dir / "datasets"
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".")) if folder.exists() else []


def test_upload_list_get_delete(client, service_settings, shared_data, tmp_path):
    csv_path = write_csv_slice(shared_data, "rte", tmp_path / "rte.csv", 30)
    with open(csv_path, "rb") as fh:
        created = client.post("/datasets", files={"file": ("rte.csv", fh)}, data={"name": "my-rte"})
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["task_type"] == "classification" and body["rows"] == 30 and body["name"] == "my-rte"
    assert set(body["labels"]) == {"entailment", "not_entailment"}
    [stored] = stored_files(service_settings)
    assert stored.suffix == ".csv" and len(stored.stem) == 64  # sha256-named
    assert [d["id"] for d in client.get("/datasets").json()] == [body["id"]]
    assert client.get(f"/datasets/{body['id']}").json()["content_hash"] == body["content_hash"]
    assert client.delete(f"/datasets/{body['id']}").status_code == 204
    assert client.get(f"/datasets/{body['id']}").status_code == 404
    assert stored_files(service_settings) == []


def test_json_rows_upload(client):
    rows = [{"text": "great", "label": "pos"}, {"text": "awful", "label": "neg"}, {"text": "fine", "label": "pos"}]
    response = client.post("/datasets", json={"rows": rows, "name": "tiny"})
    assert response.status_code == 201
    assert response.json()["labels"] == {"neg": 1, "pos": 2}


def test_bad_upload_says_where_and_stores_nothing(client, service_settings):
    bad = b"text,label\ngood,1\nbad,1\nworse,\xff\xfe\n"
    response = client.post("/datasets", files={"file": ("bad.csv", bad)})
    assert response.status_code == 422
    problem = response.json()
    assert problem["file"] == "bad.csv" and problem["line"] == 4 and "UTF-8" in problem["detail"]
    assert stored_files(service_settings) == [] and client.get("/datasets").json() == []


def test_traversal_filename_is_never_a_path(client, service_settings):
    response = client.post("/datasets", files={"file": ("../../etc/evil.csv", b"text,label\na,x\nb,y\n")})
    assert response.status_code == 201
    assert response.json()["filename"] == "evil.csv"
    [stored] = stored_files(service_settings)
    assert stored.parent == service_settings.data_dir / "datasets"
    assert not (service_settings.data_dir.parent / "etc").exists()


def test_oversize_upload_is_413_and_nothing_stored(client, service_settings):
    big = b"text,label\n" + b"".join(b"row %d,%d\n" % (i, i % 2) for i in range(40_000))
    assert len(big) > service_settings.max_upload_bytes
    response = client.post("/datasets", files={"file": ("big.csv", big)})
    assert response.status_code == 413
    assert "TASKRANK_MAX_UPLOAD_BYTES" in response.json()["detail"]
    assert stored_files(service_settings) == []


def test_wrong_content_type_is_415(client):
    response = client.post("/datasets", content=b"text,label\n", headers={"content-type": "text/csv"})
    assert response.status_code == 415


def test_ranking_runs_once_and_is_then_answered_from_the_store(client, service_settings, shared_data, tmp_path):
    csv_path = write_csv_slice(shared_data, "sst2", tmp_path / "sst2.csv", 40)
    dataset = client.post("/datasets", files={"file": ("sst2.csv", csv_path.read_bytes())}).json()
    request = {"dataset_id": dataset["id"], "method": "ensemble", "top_k": 3}
    first = client.post("/rankings", json=request)
    assert first.status_code == 202 and first.json()["state"] == "queued"
    again_while_queued = client.post("/rankings", json=request)
    assert again_while_queued.json()["id"] == first.json()["id"]
    assert run_queued_jobs(service_settings) == 1
    ranking = client.get(f"/rankings/{first.json()['id']}").json()
    assert ranking["state"] == "succeeded" and ranking["progress"] == 100.0
    names = [s["name"] for s in ranking["sources"]]
    assert len(names) == 3 and set(names) <= {"rte", "sst2", "sentence_polarity"}  # in-class only
    assert set(ranking["sources"][0]["details"]) == {"textemb", "semb", "taskemb"}
    cached = client.post("/rankings", json=request)
    assert cached.status_code == 200 and cached.json()["cached"] is True
    assert cached.json()["sources"] == ranking["sources"]
    assert run_queued_jobs(service_settings) == 0  # nothing recomputed
    assert len([j for j in client.get("/jobs").json() if j["kind"] == "rank"]) == 1
    job = client.get(f"/jobs/{first.json()['job_id']}").json()
    assert job["state"] == "succeeded" and job["duration_seconds"] is not None and job["attempts"] == 1


def test_redelivered_job_does_nothing(client, service_settings):
    rows = [{"text": "great", "label": "pos"}, {"text": "awful", "label": "neg"}]
    dataset = client.post("/datasets", json={"rows": rows}).json()
    submitted = client.post("/rankings", json={"dataset_id": dataset["id"], "method": "textemb"}).json()
    run_queued_jobs(service_settings)
    store = JobStore(service_settings.resolved_database_url)
    service = LibraryService.from_settings(service_settings)
    runner.run_rank(submitted["job_id"], store, service, service_settings)  # as if Celery redelivered it
    assert store.get_job(submitted["job_id"]).attempts == 1


def test_cancel_a_queued_job(client):
    rows = [{"text": "great", "label": "pos"}, {"text": "awful", "label": "neg"}]
    dataset = client.post("/datasets", json={"rows": rows}).json()
    submitted = client.post("/rankings", json={"dataset_id": dataset["id"], "method": "textemb"}).json()
    cancelled = client.delete(f"/jobs/{submitted['job_id']}")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    retry = client.post("/rankings", json={"dataset_id": dataset["id"], "method": "textemb"})
    assert retry.status_code == 202 and retry.json()["job_id"] != submitted["job_id"]


def test_bad_ranking_requests(client):
    assert client.post("/rankings", json={"dataset_id": "nope"}).status_code == 404
    assert client.post("/rankings", json={"dataset_id": "x", "method": "bogus"}).status_code == 422
    assert client.post("/rankings", json={"dataset_id": "x", "top_k": 0}).status_code == 422
    assert client.get("/jobs/missing").status_code == 404


def test_add_and_remove_a_library_task(client, service_settings):
    rows = [{"text": f"sentence {i}", "label": "a" if i % 2 else "b"} for i in range(20)]
    dataset = client.post("/datasets", json={"rows": rows, "name": "mine"}).json()
    job = client.post("/library/tasks", json={"dataset_id": dataset["id"], "name": "my_source"})
    assert job.status_code == 202
    run_queued_jobs(service_settings)
    assert client.get(f"/jobs/{job.json()['id']}").json()["state"] == "succeeded"
    names = [t["name"] for t in client.get("/library/tasks").json()]
    assert "my_source" in names
    assert client.post("/library/tasks", json={"dataset_id": dataset["id"], "name": "my_source"}).status_code == 409
    assert client.delete("/library/tasks/my_source").status_code == 204
    assert "my_source" not in [t["name"] for t in client.get("/library/tasks").json()]
    assert client.delete("/library/tasks/my_source").status_code == 404


def test_health_and_metrics(client):
    health = client.get("/health")
    assert health.status_code == 200
    assert health.json()["database"] == "ok" and health.json()["broker"] == "ok"
    assert health.json()["library_tasks"] == 5
    client.post("/datasets", json={"rows": [{"text": "a", "label": "x"}, {"text": "b", "label": "y"}]})
    metrics = client.get("/metrics").text
    assert 'taskrank_jobs{state="queued"} 0' in metrics and 'taskrank_queue_depth{queue="embed"}' in metrics


def test_api_keys_guard_writes(service_settings):
    settings = service_settings.model_copy(update={"api_keys": "k1,k2"})
    with TestClient(create_app(settings)) as client:
        rows = {"rows": [{"text": "a", "label": "x"}, {"text": "b", "label": "y"}]}
        assert client.post("/datasets", json=rows).status_code == 401
        assert client.post("/datasets", json=rows, headers={"Authorization": "Bearer wrong"}).status_code == 401
        ok = client.post("/datasets", json=rows, headers={"Authorization": "Bearer k2"})
        assert ok.status_code == 201
        assert client.get("/datasets").status_code == 200  # reads stay open
        assert client.delete(f"/datasets/{ok.json()['id']}").status_code == 401


def test_per_key_ownership(service_settings):
    settings = service_settings.model_copy(update={"api_keys": "alice,bob", "per_key_ownership": True})
    with TestClient(create_app(settings)) as client:
        rows = {"rows": [{"text": "a", "label": "x"}, {"text": "b", "label": "y"}]}
        mine = client.post("/datasets", json=rows, headers={"Authorization": "Bearer alice"}).json()
        assert client.get(f"/datasets/{mine['id']}", headers={"Authorization": "Bearer bob"}).status_code == 404
        assert client.get("/datasets", headers={"Authorization": "Bearer bob"}).json() == []
        assert client.get(f"/datasets/{mine['id']}", headers={"Authorization": "Bearer alice"}).status_code == 200
        assert client.get("/datasets").status_code == 401


def test_startup_objects_are_frozen_out_of_the_collector(client):
    """A full collection over the ~500k start-up objects stalled every request for 130-250 ms."""
    import gc

    try:
        assert gc.get_freeze_count() > 10_000
    finally:
        gc.unfreeze()


def test_embedded_broker_polls_every_tenth_of_a_second(service_settings):
    from worker.celery_app import make_celery
    from worker.embedded_broker import Transport

    celery = make_celery(service_settings)
    with celery.connection_for_write() as conn:
        assert isinstance(conn.transport, Transport) and conn.transport.polling_interval == 0.1
        queue = conn.SimpleQueue("probe")
        queue.put({"job": "abc"})
        message = queue.get(timeout=5)
        assert message.payload == {"job": "abc"}
        message.ack()
        queue.close()
    assert (service_settings.data_dir / "broker.sqlite").is_file()


def test_the_same_upload_twice_is_one_record(client, service_settings):
    """Same content, name and owner: the existing record (200); another name is another record (201)."""
    data = b"text,label\ngreat film,pos\nawful film,neg\nfine film,pos\n"
    first = client.post("/datasets", files={"file": ("films.csv", data)}, data={"name": "films"})
    again = client.post("/datasets", files={"file": ("films.csv", data)}, data={"name": "films"})
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["id"] == first.json()["id"]
    rows = [{"text": "great", "label": "pos"}, {"text": "awful", "label": "neg"}]
    as_rows = [client.post("/datasets", json={"rows": rows, "name": "r"}) for _ in range(2)]
    assert [r.status_code for r in as_rows] == [201, 200] and as_rows[0].json()["id"] == as_rows[1].json()["id"]
    other = client.post("/datasets", files={"file": ("films.csv", data)}, data={"name": "films, again"})
    assert other.status_code == 201 and other.json()["id"] != first.json()["id"]
    assert len(client.get("/datasets").json()) == 3


def test_the_same_upload_by_another_owner_is_their_own_record(service_settings):
    settings = service_settings.model_copy(update={"api_keys": "alice,bob", "per_key_ownership": True})
    rows = {"rows": [{"text": "a", "label": "x"}, {"text": "b", "label": "y"}], "name": "shared"}
    with TestClient(create_app(settings)) as client:
        alice = [client.post("/datasets", json=rows, headers={"Authorization": "Bearer alice"}) for _ in range(2)]
        bob = client.post("/datasets", json=rows, headers={"Authorization": "Bearer bob"})
    assert [r.status_code for r in alice] == [201, 200] and bob.status_code == 201
    assert bob.json()["id"] != alice[0].json()["id"]


def test_validate_only_describes_and_stores_nothing(client, service_settings):
    data = b"text,label\ngreat film,pos\nawful film,neg\nfine film,pos\n"
    checked = client.post("/datasets/validate", files={"file": ("films.csv", data)}, data={"name": "films"})
    assert checked.status_code == 200, checked.text
    body = checked.json()
    assert body["rows"] == 3 and body["task_type"] == "classification" and body["name"] == "films"
    assert body["labels"] == {"neg": 1, "pos": 2} and "id" not in body
    rows = client.post("/datasets/validate", json={"rows": [{"text": "a", "label": "x"}, {"text": "b", "label": "y"}]})
    assert rows.status_code == 200 and rows.json()["rows"] == 2
    bad = client.post("/datasets/validate", files={"file": ("bad.csv", b"text,label\nonly,one\n")})
    assert bad.status_code == 422
    assert stored_files(service_settings) == [] and client.get("/datasets").json() == []
    assert [p.name for p in (service_settings.data_dir / "datasets").iterdir()] == []  # no temp file left
