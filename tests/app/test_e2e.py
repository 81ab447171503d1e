"""End to end with real processes: the API under uvicorn, Celery workers on Redis or the embedded broker."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.app.conftest import write_csv_slice

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
TASKRANK = [sys.executable, "-m", "app.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_available() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@contextmanager
def processes(*commands: list[str], env: dict[str, str], log_dir: Path) -> Iterator[list[subprocess.Popen]]:
    procs = []
    try:
        for i, command in enumerate(commands):
            log = open(log_dir / f"proc{i}.log", "wb")
            procs.append(subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL))
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def wait_healthy(url: str, procs: list[subprocess.Popen], log_dir: Path, workers: int = 1,
                 timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.poll() is not None:
                logs = "\n".join(p.read_text(errors="replace")[-3000:] for p in sorted(log_dir.glob("*.log")))
                raise AssertionError(f"a service process exited with {proc.returncode}:\n{logs}")
        try:
            last = httpx.get(f"{url}/health", timeout=5).json()
            if last.get("status") == "ok" and last.get("workers", 0) >= workers:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"service not healthy after {timeout}s: {last}")


def wait_job(url: str, job_id: str, timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    seen_progress = set()
    while time.monotonic() < deadline:
        job = httpx.get(f"{url}/jobs/{job_id}", timeout=10).json()
        seen_progress.add(job["progress"])
        if job["state"] in ("succeeded", "failed", "cancelled"):
            job["seen_progress"] = sorted(seen_progress)
            return job
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} not finished after {timeout}s: {job}")


def base_env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKRANK_")}
    env.update({"HF_HUB_OFFLINE": "1", "TASKRANK_DATA_DIR": str(data_dir), "TASKRANK_TORCH_THREADS": "1", **extra})
    return env


@pytest.mark.skipif(not redis_available(), reason="Redis is not running on 127.0.0.1:6379")
def test_ranking_through_redis_and_a_worker_process(service_settings, shared_data, tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    broker = "redis://127.0.0.1:6379/14"
    subprocess.run(["redis-cli", "-n", "14", "flushdb"], check=False, capture_output=True)
    env = base_env(service_settings.data_dir, TASKRANK_MODEL=service_settings.model, TASKRANK_BROKER_URL=broker)
    with processes(TASKRANK + ["serve", "--no-worker", "--port", str(port)],
                   TASKRANK + ["worker", "--queues", "embed"], env=env, log_dir=tmp_path) as procs:
        wait_healthy(url, procs, tmp_path)
        csv_path = write_csv_slice(shared_data, "rte", tmp_path / "rte_slice.csv", 60)
        dataset = httpx.post(f"{url}/datasets", files={"file": ("rte_slice.csv", csv_path.read_bytes())}).json()
        submitted = httpx.post(f"{url}/rankings", json={"dataset_id": dataset["id"], "method": "taskemb",
                                                        "all_class": True}).json()
        job = wait_job(url, submitted["job_id"])
        assert job["state"] == "succeeded", job
        ranking = httpx.get(f"{url}/rankings/{submitted['id']}").json()
        sources = ranking["sources"]
        assert {s["name"] for s in sources} == {"rte", "sst2", "sentence_polarity", "stsb", "conll2003_ner"}
        assert [s["rank"] for s in sources] == [1, 2, 3, 4, 5]
        assert [s["score"] for s in sources] == sorted((s["score"] for s in sources), reverse=True)
        assert len(sources[0]["details"]) == 5  # one rank per TaskEmb component: cls + 2 layers x 2
        metrics = httpx.get(f"{url}/metrics").text
        assert 'taskrank_jobs{state="succeeded"} 1' in metrics


@pytest.fixture(scope="module")
def embedded_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`taskrank serve`, exactly as the README's main command runs it: embedded broker, SQLite, default library."""
    logs = tmp_path_factory.mktemp("embedded-logs")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = base_env(tmp_path_factory.mktemp("embedded-data"), TASKRANK_PORT=str(port))
    with processes(TASKRANK + ["serve"], env=env, log_dir=logs) as procs:
        wait_healthy(url, procs, logs)
        yield url


def test_embedded_mode_ranks_with_the_shipped_library(embedded_service, shared_data, tmp_path):
    url = embedded_service
    health = httpx.get(f"{url}/health").json()
    assert health["library_tasks"] == 30
    csv_path = write_csv_slice(shared_data, "sst2", tmp_path / "sst2_slice.csv", 200)
    dataset = httpx.post(f"{url}/datasets", files={"file": ("reviews.csv", csv_path.read_bytes())}).json()
    request = {"dataset_id": dataset["id"], "method": "textemb", "top_k": 5}
    submitted = httpx.post(f"{url}/rankings", json=request)
    assert submitted.status_code == 202
    job = wait_job(url, submitted.json()["job_id"])
    assert job["state"] == "succeeded", job
    ranking = httpx.get(f"{url}/rankings/{submitted.json()['id']}").json()
    top = [s["name"] for s in ranking["sources"]]
    assert {"sst2", "sentence_polarity", "movie_reviews"} & set(top[:3]), top
    again = httpx.post(f"{url}/rankings", json=request)
    assert again.status_code == 200 and again.json()["cached"] and again.json()["id"] == submitted.json()["id"]
    rank_jobs = [j for j in httpx.get(f"{url}/jobs").json() if j["kind"] == "rank"]
    assert len(rank_jobs) == 1  # the identical request ran nothing


def test_client_against_a_live_server(embedded_service, shared_data):
    pd = pytest.importorskip("pandas")
    from app.client import TaskrankClient, TaskrankError

    rows = [{"text": f"the film was {w}", "label": lab} for w, lab in
            [("great", "pos"), ("awful", "neg"), ("superb", "pos"), ("boring", "neg"), ("moving", "pos"),
             ("dreadful", "neg"), ("charming", "pos"), ("tedious", "neg")]]
    with TaskrankClient(embedded_service) as client:
        frame = client.rank(pd.DataFrame(rows), method="semb", top_k=4, progress=False, timeout=240)
        assert list(frame.columns[:4]) == ["rank", "name", "task_type", "score"]
        assert len(frame) == 4 and set(frame["task_type"]) == {"classification"}
        from_list = client.upload(rows, name="as-list")
        assert from_list["rows"] == 8 and from_list["task_type"] == "classification"
        with pytest.raises(TaskrankError) as bad:
            client.upload([{"text": "only", "label": "one"}, {"text": "label", "label": "one"}])
        assert bad.value.status == 422 and "only one label" in str(bad.value)


def test_serve_with_several_api_processes(service_settings, tmp_path):
    """`taskrank serve --api-workers 2`: two uvicorn processes over one database, both answering."""
    import psutil

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = base_env(service_settings.data_dir, TASKRANK_MODEL=service_settings.model, TASKRANK_ACCESS_LOG="0")
    with processes(TASKRANK + ["serve", "--no-worker", "--api-workers", "2", "--port", str(port)],
                   env=env, log_dir=tmp_path) as procs:
        wait_healthy(url, procs, tmp_path, workers=0)
        children = [p for p in psutil.Process(procs[0].pid).children(recursive=True)
                    if "spawn_main" in " ".join(p.cmdline())]
        assert len(children) == 2
        created = [httpx.post(f"{url}/datasets", json={"rows": [{"text": f"t{i}", "label": "a"},
                                                                 {"text": f"u{i}", "label": "b"}]}).json()["id"]
                   for i in range(6)]
        listed = {d["id"] for d in httpx.get(f"{url}/datasets", params={"limit": 50}).json()}
        assert set(created) <= listed  # every process writes to and reads from the same store
        assert httpx.get(f"{url}/library/tasks").json()  # the library was prepared once, before the fork


def test_a_ranking_starts_while_a_transfer_trains(service_settings, shared_data, tmp_path):
    """`taskrank serve` runs the `embed` and `train` queues in separate worker processes: a ranking
    submitted while a transfer batch fine-tunes starts at once instead of queueing behind it."""
    import shutil

    data_dir = tmp_path / "served"
    shutil.copytree(service_settings.data_dir, data_dir)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = base_env(data_dir, TASKRANK_MODEL=service_settings.model, TASKRANK_DEVICE="cpu")
    with processes(TASKRANK + ["serve", "--port", str(port)], env=env, log_dir=tmp_path) as procs:
        wait_healthy(url, procs, tmp_path)
        target_csv = write_csv_slice(shared_data, "sst2", tmp_path / "target.csv", 200)
        target = httpx.post(f"{url}/datasets", files={"file": ("target.csv", target_csv.read_bytes())}).json()
        query_csv = write_csv_slice(shared_data, "rte", tmp_path / "query.csv", 30)
        query = httpx.post(f"{url}/datasets", files={"file": ("query.csv", query_csv.read_bytes())}).json()
        slow = {"epochs": 20, "source_epochs": 5, "batch_size": 8, "max_length": 32, "source_max_rows": 200,
                "target_max_rows": 200, "dev_max_rows": 40}
        batch = httpx.post(f"{url}/transfers", json={"target_dataset_id": target["id"], "sources": ["rte"],
                                                     "seeds": [1, 2, 3], "options": slow}, timeout=30)
        assert batch.status_code == 202, batch.text
        batch = batch.json()
        deadline = time.monotonic() + 120
        while not any(httpx.get(f"{url}/jobs/{j}").json()["state"] == "running" for j in batch["job_ids"]):
            assert time.monotonic() < deadline, "the transfer never started"
            time.sleep(0.2)

        submitted_at = time.monotonic()
        ranking = httpx.post(f"{url}/rankings", json={"dataset_id": query["id"], "method": "textemb"}).json()
        while httpx.get(f"{url}/jobs/{ranking['job_id']}").json()["state"] == "queued":
            assert time.monotonic() - submitted_at < 15, "the ranking waited behind the transfer"
            time.sleep(0.2)
        training = [httpx.get(f"{url}/jobs/{j}").json() for j in batch["job_ids"]]
        assert any(j["state"] == "running" for j in training), "the transfer finished first: make it slower"
        assert wait_job(url, ranking["job_id"])["state"] == "succeeded"
        httpx.delete(f"{url}/transfers/{batch['id']}")
