"""The Celery tasks' contract: one task per job kind, on its queue, late-acknowledged and retried on
transient errors only; payloads validated before any work; a redelivered job does nothing."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.exc import OperationalError

from app.main import create_app
from library.jobs import JobState, JobStore
from library.service import LibraryService
from tests.app.test_api import run_queued_jobs
from worker import runner
from worker.job_kinds import EMBED_QUEUE, JOB_KINDS, TRAIN_QUEUE


def test_every_job_kind_is_a_task_on_its_queue_with_late_acks_and_retries():
    from worker.celery_app import celery_app
    from worker.tasks import TASKS

    assert set(TASKS) == set(JOB_KINDS)
    assert {k.queue for k in JOB_KINDS.values()} == {EMBED_QUEUE, TRAIN_QUEUE}
    assert JOB_KINDS["rank"].queue == EMBED_QUEUE and JOB_KINDS["transfer"].queue == TRAIN_QUEUE
    for name, kind in JOB_KINDS.items():
        task = celery_app.tasks[kind.task_name]
        assert task.name == TASKS[name].name == kind.task_name
        assert task.acks_late is True
        assert runner.TransientJobError in task.autoretry_for and task.max_retries >= 3
        route = celery_app.amqp.router.route({}, kind.task_name)
        assert route["queue"].name == kind.queue


def test_a_transient_error_is_retried_and_a_bad_input_is_not(monkeypatch):
    from worker import tasks

    def database_down(*_args):
        raise OperationalError("SELECT 1", {}, Exception("connection refused"))

    def bad_input(*_args):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(tasks, "job_store", lambda: None)
    monkeypatch.setattr(tasks, "library_service", lambda: None)
    with pytest.raises(runner.TransientJobError):
        tasks._run(database_down, "job-1")  # Celery's autoretry_for catches this one
    with pytest.raises(ZeroDivisionError):
        tasks._run(bad_input, "job-2")  # not transient: no retry


@pytest.mark.parametrize("kind, params, field", [
    ("rank", {"method": "textemb"}, "top_k"),
    ("rank", {"method": "textemb", "top_k": 0}, "top_k"),
    ("add_source", {"description": "x"}, "name"),
    ("transfer", {"role": "source", "seeds": [13]}, "source"),
    ("transfer", {"role": "combined", "seeds": [13], "method": "intermediate"}, "multi-source"),
])
def test_a_malformed_payload_fails_the_job_with_the_field_named(service_settings, kind, params, field):
    store = JobStore(service_settings.resolved_database_url)
    service = LibraryService.from_settings(service_settings)
    try:
        job = store.create_job(kind, params=params, dataset_id=None, queue=JOB_KINDS[kind].queue)
        JOB_KINDS[kind].handler(job.id, store, service, service_settings)  # no exception escapes
        failed = store.get_job(job.id)
        assert failed.state == JobState.FAILED
        assert JOB_KINDS[kind].payload.__name__ in failed.error and field in failed.error
    finally:
        service.close()
        store.close()


def test_a_redelivered_job_does_nothing(service_settings):
    with TestClient(create_app(service_settings)) as client:
        rows = [{"text": "great film", "label": "pos"}, {"text": "awful film", "label": "neg"}] * 3
        dataset = client.post("/datasets", json={"rows": rows}).json()
        ranked = client.post("/rankings", json={"dataset_id": dataset["id"], "method": "semb"}).json()
        added = client.post("/library/tasks", json={"dataset_id": dataset["id"], "name": "films"}).json()
        assert run_queued_jobs(service_settings) == 2
        store = JobStore(service_settings.resolved_database_url)
        service = LibraryService.from_settings(service_settings)
        try:
            before = {j: store.get_job(j) for j in (ranked["job_id"], added["id"])}
            for job_id, job in before.items():
                JOB_KINDS[job.kind].handler(job_id, store, service, service_settings)  # as Celery would redeliver
                after = store.get_job(job_id)
                assert after.state == JobState.SUCCEEDED and after.attempts == job.attempts
                assert after.finished_at == job.finished_at
            assert len([t for t in service.store.list_tasks() if t.name == "films"]) == 1
        finally:
            service.close()
            store.close()
