"""Faults with nothing lost: a worker killed mid-job, Redis restarted, a running job cancelled.

Real processes throughout: the API under uvicorn, Celery workers, a Redis server of the test's own.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.app.conftest import write_csv_slice
from tests.app.test_e2e import REPO, TASKRANK, base_env, free_port, wait_healthy, wait_job

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")]


class Service:
    """An API process and any number of worker processes (each in its own process group)."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env, self.log_dir = env, log_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.procs: list[subprocess.Popen] = []

    def _spawn(self, args: list[str], name: str) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}-{len(self.procs)}.log", "wb")
        proc = subprocess.Popen(TASKRANK + args, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        self.procs.append(proc)
        return proc

    def api(self) -> subprocess.Popen:
        return self._spawn(["serve", "--no-worker", "--port", str(self.port)], "api")

    def worker(self) -> subprocess.Popen:
        return self._spawn(["worker", "--queues", "embed"], "worker")

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


class RedisServer:
    """A Redis of the test's own (no persistence, like the machine's), so restarting it disturbs nothing else."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(50):
            if subprocess.run(["redis-cli", "-p", str(self.port), "ping"], capture_output=True).stdout.strip() == b"PONG":
                return
            time.sleep(0.1)
        raise AssertionError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


@pytest.fixture
def redis_server():
    server = RedisServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def slow_service(slow_library, tmp_path, redis_server):
    model_dir, library_db = slow_library
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "taskrank.db").write_bytes(library_db.read_bytes())
    env = base_env(data_dir, TASKRANK_MODEL=str(model_dir), TASKRANK_BROKER_URL=redis_server.url,
                   TASKRANK_JOB_STALE_AFTER="6", TASKRANK_JOB_REQUEUE_AFTER="4", TASKRANK_SWEEP_INTERVAL="1",
                   TASKRANK_BROKER_VISIBILITY_TIMEOUT="3600")
    service = Service(env, tmp_path)
    yield service
    service.close()


def upload_slice(url: str, shared_data: Path, tmp_path: Path, rows: int, task: str = "sst2") -> str:
    path = write_csv_slice(shared_data, task, tmp_path / f"{task}-{rows}.csv", rows)
    response = httpx.post(f"{url}/datasets", files={"file": (path.name, path.read_bytes())}, timeout=60)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def wait_running(url: str, job_id: str, min_progress: float = 1.0, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = httpx.get(f"{url}/jobs/{job_id}").json()
        if job["state"] == "running" and job["progress"] >= min_progress:
            return job
        assert job["state"] in ("queued", "running"), job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} never got running: {job}")


def test_worker_killed_mid_job_completes_exactly_once(slow_service, shared_data, tmp_path):
    service = slow_service
    service.api()
    first = service.worker()
    wait_healthy(service.url, service.procs, tmp_path)
    dataset_id = upload_slice(service.url, shared_data, tmp_path, 3000)
    submitted = httpx.post(f"{service.url}/rankings", json={"dataset_id": dataset_id, "method": "textemb"}).json()
    wait_running(service.url, submitted["job_id"], min_progress=5.0)
    os.killpg(first.pid, signal.SIGKILL)  # the worker and its pool child, as a lost machine would
    first.wait()
    killed = httpx.get(f"{service.url}/jobs/{submitted['job_id']}").json()
    assert killed["state"] == "running" and killed["attempts"] == 1
    partial = httpx.get(f"{service.url}/rankings/{submitted['id']}").json()
    assert partial["sources"] is None  # nothing half-done is visible
    service.worker()
    job = wait_job(service.url, submitted["job_id"], timeout=300)
    assert job["state"] == "succeeded", job
    assert job["attempts"] == 2  # taken over once, run to the end once
    ranking = httpx.get(f"{service.url}/rankings/{submitted['id']}").json()
    assert [s["name"] for s in ranking["sources"]] and ranking["state"] == "succeeded"
    time.sleep(3)  # any duplicate delivery would show up as a third attempt
    assert httpx.get(f"{service.url}/jobs/{submitted['job_id']}").json()["attempts"] == 2


def test_redis_restart_idle_and_with_queued_jobs(slow_service, redis_server, shared_data, tmp_path):
    service = slow_service
    service.api()
    worker = service.worker()
    wait_healthy(service.url, service.procs, tmp_path)
    dataset_id = upload_slice(service.url, shared_data, tmp_path, 60)

    redis_server.stop()  # idle outage: /health says so honestly
    during = httpx.get(f"{service.url}/health", timeout=30)
    assert during.status_code == 503 and during.json()["broker"].startswith("unavailable")
    assert during.json()["database"] == "ok"
    assert httpx.get(f"{service.url}/datasets/{dataset_id}").status_code == 200  # reads still work
    redis_server.start()
    assert httpx.get(f"{service.url}/health", timeout=30).status_code == 200
    after_idle = httpx.post(f"{service.url}/rankings", json={"dataset_id": dataset_id, "method": "semb"}).json()
    assert wait_job(service.url, after_idle["job_id"])["state"] == "succeeded"  # the worker reconnected

    os.killpg(worker.pid, signal.SIGTERM)  # jobs now wait in Redis
    worker.wait(timeout=30)
    queued = [httpx.post(f"{service.url}/rankings",
                         json={"dataset_id": dataset_id, "method": "textemb", "top_k": k}).json() for k in (1, 2, 3)]
    assert all(q["state"] == "queued" for q in queued)
    redis_server.stop()  # Redis restarts without persistence: the messages are gone
    redis_server.start()
    service.worker()
    for submitted in queued:
        job = wait_job(service.url, submitted["job_id"], timeout=180)
        assert job["state"] == "succeeded", job  # re-dispatched from the job table
        assert job["attempts"] == 1
    metrics = httpx.get(f"{service.url}/metrics").text
    assert 'taskrank_jobs{state="succeeded"} 4' in metrics and 'taskrank_queue_depth{queue="embed"} 0' in metrics


def test_cancel_a_running_job_and_take_the_next(slow_service, shared_data, tmp_path):
    service = slow_service
    service.api()
    service.worker()
    wait_healthy(service.url, service.procs, tmp_path)
    big = upload_slice(service.url, shared_data, tmp_path, 3000)
    small = upload_slice(service.url, shared_data, tmp_path, 50, task="rte")
    long_job = httpx.post(f"{service.url}/rankings", json={"dataset_id": big, "method": "textemb"}).json()
    next_job = httpx.post(f"{service.url}/rankings", json={"dataset_id": small, "method": "textemb"}).json()
    running = wait_running(service.url, long_job["job_id"], min_progress=2.0)
    assert running["progress"] < 100
    assert httpx.delete(f"{service.url}/jobs/{long_job['job_id']}").status_code == 200
    stopped = wait_job(service.url, long_job["job_id"], timeout=60)
    assert stopped["state"] == "cancelled" and stopped["progress"] < 100
    assert httpx.get(f"{service.url}/rankings/{long_job['id']}").json()["sources"] is None
    assert wait_job(service.url, next_job["job_id"])["state"] == "succeeded"
