"""The job store (record of truth) on SQLite and PostgreSQL: states, progress/ETA, cancellation, rankings."""

from __future__ import annotations

import time

import pytest

from library.jobs import JobState, JobStore


@pytest.fixture
def jobs(store_url: str):
    store = JobStore(store_url)
    yield store
    store.close()


def test_job_lifecycle_with_progress_and_eta(jobs):
    job = jobs.create_job("rank", params={"method": "textemb"}, dataset_id="d1")
    assert job.state == JobState.QUEUED and jobs.queue_depths()["embed"] == 1
    started = jobs.start_job(job.id)
    assert started is not None and started.state == JobState.RUNNING and started.attempts == 1
    time.sleep(0.05)
    assert jobs.progress(job.id, 25, 100, "embedding") is True
    running = jobs.get_job(job.id)
    assert running.progress == 0.25 and running.stage == "embedding"
    assert running.eta_seconds is not None and running.eta_seconds > 0
    assert jobs.succeed_job(job.id, {"ranking_id": "r1"})
    done = jobs.get_job(job.id)
    assert done.state == JobState.SUCCEEDED and done.progress == 1.0 and done.result == {"ranking_id": "r1"}
    assert jobs.start_job(job.id) is None  # a redelivered message finds it finished
    assert not jobs.fail_job(job.id, "late failure")  # terminal states stay
    assert jobs.get_job(job.id).state == JobState.SUCCEEDED
    assert jobs.count_by_state()["succeeded"] == 1
    assert [kind for kind, _ in jobs.finished_durations()] == ["rank"]


def test_cancellation_of_queued_and_running_jobs(jobs):
    queued = jobs.create_job("rank", params={})
    assert jobs.request_cancel(queued.id).state == JobState.CANCELLED
    assert jobs.start_job(queued.id) is None
    running = jobs.create_job("rank", params={})
    jobs.start_job(running.id)
    assert jobs.progress(running.id, 3, 10) is True
    assert jobs.request_cancel(running.id).state == JobState.RUNNING  # stops at its next report
    assert jobs.progress(running.id, 10, 10) is False
    assert jobs.mark_cancelled(running.id)
    stopped = jobs.get_job(running.id)
    assert stopped.state == JobState.CANCELLED and stopped.done == 3  # where it was when cancelled


def test_rankings_are_unique_per_request_key(jobs):
    first, created = jobs.add_ranking(request_key="k" * 64, dataset_id="d", job_id="j1", method="semb",
                                      top_k=5, all_class=False)
    again, created_again = jobs.add_ranking(request_key="k" * 64, dataset_id="d", job_id="j2", method="semb",
                                            top_k=5, all_class=False)
    assert created and not created_again and again.id == first.id and again.job_id == "j1"
    jobs.set_ranking_result(first.id, {"sources": []})
    assert jobs.find_ranking("k" * 64).result == {"sources": []}


def test_datasets_and_worker_heartbeats(jobs):
    record = jobs.add_dataset(name="n", filename="f.csv", file_sha256="a" * 64, file_ext="csv",
                              content_hash="b" * 64, task_type="classification", rows=3, labels={"x": 2, "y": 1},
                              size_bytes=10, owner=None)
    assert jobs.get_dataset(record.id).labels == {"x": 2, "y": 1}
    assert jobs.datasets_with_file("a" * 64) == 1
    jobs.heartbeat("w1", "embed")
    assert jobs.live_workers() == [("w1", "embed")]
    jobs.forget_worker("w1")
    assert jobs.live_workers() == []
    assert jobs.delete_dataset(record.id).id == record.id and jobs.get_dataset(record.id) is None
