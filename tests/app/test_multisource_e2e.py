"""A multi-source transfer batch end to end: the API under uvicorn, a Celery worker on the `train` queue, Redis."""

from __future__ import annotations

import subprocess
import time

import httpx
import pytest

from tests.app.conftest import write_csv_slice
from tests.app.test_e2e import TASKRANK, base_env, free_port, processes, redis_available, wait_healthy

pytestmark = pytest.mark.slow


def wait_batch(url: str, batch_id: str, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    batch: dict = {}
    while time.monotonic() < deadline:
        batch = httpx.get(f"{url}/transfers/{batch_id}", timeout=10).json()
        if batch["state"] in ("succeeded", "failed", "cancelled"):
            return batch
        time.sleep(0.5)
    raise AssertionError(f"transfer {batch_id} not finished after {timeout}s: {batch}")


@pytest.mark.skipif(not redis_available(), reason="Redis is not running on 127.0.0.1:6379")
def test_scalearn_batch_through_redis_and_a_train_worker(service_settings, shared_data, tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    broker = "redis://127.0.0.1:6379/13"
    subprocess.run(["redis-cli", "-n", "13", "flushdb"], check=False, capture_output=True)
    env = base_env(service_settings.data_dir, TASKRANK_MODEL=service_settings.model, TASKRANK_BROKER_URL=broker)
    with processes(TASKRANK + ["serve", "--no-worker", "--port", str(port)],
                   TASKRANK + ["worker", "--queues", "train", "--concurrency", "1"], env=env,
                   log_dir=tmp_path) as procs:
        wait_healthy(url, procs, tmp_path)
        csv_path = write_csv_slice(shared_data, "sst2", tmp_path / "sst2_slice.csv", 40)
        dataset = httpx.post(f"{url}/datasets", files={"file": ("sst2_slice.csv", csv_path.read_bytes())}).json()
        options = {"epochs": 1, "batch_size": 8, "max_length": 32, "source_max_rows": 16, "target_max_rows": 24,
                   "dev_max_rows": 12, "adapter_learning_rate": 1e-3, "combination_learning_rate": 1e-2}
        submitted = httpx.post(f"{url}/transfers", json={
            "target_dataset_id": dataset["id"], "sources": ["rte", "sentence_polarity"], "method": "scalearn",
            "seeds": [5], "options": options})
        assert submitted.status_code == 202, submitted.text
        batch = wait_batch(url, submitted.json()["id"])
        assert batch["state"] == "succeeded", batch
        combined = batch["combined"]
        assert combined["state"] == "succeeded" and combined["method"] == "scalearn" and len(combined["scores"]) == 1
        # ScaLearn: a scaling vector per layer for each source and the target's own adapter (2 layers, H = 32)
        assert combined["method_parameters"] == 2 * 3 * 32
        assert combined["weight_kind"] == "scale" and set(combined["weights"]) == {"rte", "sentence_polarity",
                                                                                 "target"}
        assert combined["single_adapter_mean"] is not None
        jobs = [httpx.get(f"{url}/jobs/{j}").json() for j in batch["job_ids"]]
        assert {j["queue"] for j in jobs} == {"train"} and {j["state"] for j in jobs} == {"succeeded"}
        adapters = sorted(p.name for p in (service_settings.data_dir / "checkpoints").glob("adapter-*.safetensors"))
        assert len(adapters) == 3  # two sources and the target's own, cached for later batches
