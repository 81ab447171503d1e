"""Transfer batches over the REST API: the tiny model and library, jobs run in-process like a worker."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from library.settings import Settings
from tests.app.conftest import write_csv_slice
from tests.app.test_api import run_queued_jobs

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAST = {"epochs": 1, "batch_size": 8, "max_length": 32, "source_max_rows": 16, "target_max_rows": 24,
        "dev_max_rows": 12}




@pytest.fixture
def client(service_settings: Settings):
    with TestClient(create_app(service_settings)) as test_client:
        yield test_client


def upload(client: TestClient, shared_data: Path, tmp_path: Path, task: str = "sst2", rows: int = 40) -> dict:
    path = write_csv_slice(shared_data, task, tmp_path / f"{task}-{rows}.csv", rows)
    response = client.post("/datasets", files={"file": (path.name, path.read_bytes())}, data={"name": f"my-{task}"})
    assert response.status_code == 201, response.text
    return response.json()


def checkpoints(settings: Settings) -> list[str]:
    folder = settings.data_dir / "checkpoints"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_batch_runs_baseline_and_sources_and_reports_gains(client, service_settings, shared_data, tmp_path):
    target = upload(client, shared_data, tmp_path)
    response = client.post("/transfers", json={"target_dataset_id": target["id"], "seeds": [1, 2],
                                               "sources": ["rte", "sentence_polarity"], "options": FAST})
    assert response.status_code == 202, response.text
    batch = response.json()
    assert batch["state"] == "queued" and batch["method"] == "intermediate" and len(batch["job_ids"]) == 3
    assert [s["name"] for s in batch["sources"]] == ["rte", "sentence_polarity"]
    assert all(s["rank"] is None and s["state"] == "queued" for s in batch["sources"])
    for job_id in batch["job_ids"]:
        job = client.get(f"/jobs/{job_id}").json()
        assert job["kind"] == "transfer" and job["queue"] == "train" and job["dataset_id"] == target["id"]

    assert run_queued_jobs(service_settings) == 3
    done = client.get(f"/transfers/{batch['id']}").json()
    assert done["state"] == "succeeded" and done["progress"] == 100.0 and done["main_metric"] == "accuracy"
    baseline = done["baseline"]
    assert baseline["state"] == "succeeded" and len(baseline["scores"]) == 2
    assert baseline["mean"] == pytest.approx(sum(baseline["scores"]) / 2)
    for source in done["sources"]:
        assert source["state"] == "succeeded" and len(source["scores"]) == 2 and source["checkpoint_reused"] is False
        assert source["gain"] == pytest.approx(source["mean"] - baseline["mean"])
        if baseline["mean"]:
            assert source["relative_gain"] == pytest.approx(100 * source["gain"] / baseline["mean"])
        assert math.isfinite(source["std"])
    assert len([n for n in checkpoints(service_settings) if n.endswith(".safetensors")]) == 2
    assert not (service_settings.data_dir / "transfer_runs").exists() or not any(
        (service_settings.data_dir / "transfer_runs").iterdir())
    result = client.get(f"/jobs/{done['sources'][0]['job_id']}").json()["result"]
    assert result["role"] == "source" and result["dev_rows"] == 8 and result["train_rows"] == 24
    assert [r["seed"] for r in result["runs"]] == [1, 2]

    page = client.get(f"/transfers/{batch['id']}/view")
    assert page.status_code == 200 and 'id="gain-chart"' in page.text
    assert "no transfer (baseline)" in page.text and "sentence_polarity" in page.text
    assert page.text.count('class="whisker"') == 3 * 2  # three lines per source's error bar
    assert [t["id"] for t in client.get("/transfers").json()] == [batch["id"]]


def test_from_ranking_takes_its_top_k_with_their_ranks(client, service_settings, shared_data, tmp_path):
    target = upload(client, shared_data, tmp_path)
    ranking = client.post("/rankings", json={"dataset_id": target["id"], "method": "textemb", "top_k": 3}).json()
    request = {"target_dataset_id": target["id"], "from_ranking": {"ranking_id": ranking["id"], "top_k": 2},
               "options": FAST}
    early = client.post("/transfers", json=request)
    assert early.status_code == 409 and "no sources" in early.json()["detail"]
    run_queued_jobs(service_settings)
    ranked = client.get(f"/rankings/{ranking['id']}").json()["sources"]
    response = client.post("/transfers", json=request)
    assert response.status_code == 202, response.text
    batch = response.json()
    assert [(s["name"], s["rank"]) for s in batch["sources"]] == [(s["name"], s["rank"]) for s in ranked[:2]]
    assert batch["ranking_id"] == ranking["id"] and len(batch["job_ids"]) == 3
    page = client.get(f"/transfers/{batch['id']}/view")
    assert page.status_code == 200 and "follows it live" in page.text and ranked[0]["name"] in page.text


def test_cancel_a_batch_cancels_all_its_jobs(client, service_settings, shared_data, tmp_path):
    target = upload(client, shared_data, tmp_path)
    batch = client.post("/transfers", json={"target_dataset_id": target["id"], "sources": ["rte", "sst2"],
                                            "options": FAST}).json()
    cancelled = client.delete(f"/transfers/{batch['id']}")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    assert {client.get(f"/jobs/{j}").json()["state"] for j in batch["job_ids"]} == {"cancelled"}
    assert run_queued_jobs(service_settings) == 0
    assert client.delete("/transfers/nope").status_code == 404


def test_a_second_batch_reuses_the_cached_source_checkpoint(client, service_settings, shared_data, tmp_path):
    target = upload(client, shared_data, tmp_path)
    request = {"target_dataset_id": target["id"], "sources": ["rte"], "seeds": [3], "options": FAST}
    first = client.post("/transfers", json=request).json()
    run_queued_jobs(service_settings)
    stored = checkpoints(service_settings)
    assert len([n for n in stored if n.endswith(".safetensors")]) == 1
    second = client.post("/transfers", json={**request, "seeds": [4]}).json()
    assert second["id"] != first["id"]
    run_queued_jobs(service_settings)
    assert checkpoints(service_settings) == stored
    [source] = client.get(f"/transfers/{second['id']}").json()["sources"]
    assert source["state"] == "succeeded" and source["checkpoint_reused"] is True
    assert client.get(f"/transfers/{first['id']}").json()["sources"][0]["checkpoint_reused"] is False


def test_an_uploaded_source_and_dev_set(client, service_settings, shared_data, tmp_path):
    target = upload(client, shared_data, tmp_path, rows=30)
    dev = upload(client, shared_data, tmp_path, rows=12)
    source = upload(client, shared_data, tmp_path, task="rte", rows=20)
    batch = client.post("/transfers", json={"target_dataset_id": target["id"], "dev_dataset_id": dev["id"],
                                            "sources": [source["id"]], "seeds": [7], "options": FAST}).json()
    assert batch["sources"][0]["kind"] == "dataset" and batch["sources"][0]["name"] == "my-rte"
    run_queued_jobs(service_settings)
    done = client.get(f"/transfers/{batch['id']}").json()
    assert done["state"] == "succeeded", done
    result = client.get(f"/jobs/{done['baseline']['job_id']}").json()["result"]
    assert result["dev_rows"] == 12 and result["train_rows"] == 24


def test_bad_requests(client, service_settings, shared_data, tmp_path):
    target = upload(client, shared_data, tmp_path)
    tagging = client.post("/datasets", json={"rows": [{"tokens": ["a", "b"], "tags": ["O", "B-X"]}] * 3}).json()
    base = {"target_dataset_id": target["id"], "options": FAST}

    def post(**body):
        return client.post("/transfers", json={**base, **body})

    assert post(target_dataset_id="nope", sources=["rte"]).status_code == 404
    unknown = post(sources=["no_such_task"])
    assert unknown.status_code == 422 and "unknown source 'no_such_task'" in unknown.json()["detail"]
    assert post(sources=["rte"], from_ranking={"ranking_id": "x"}).status_code == 422
    assert post().status_code == 422
    assert post(sources=["rte", "rte"]).status_code == 422
    assert post(sources=["rte"], options={"epochs": 0}).status_code == 422
    assert post(from_ranking={"ranking_id": "nope"}).status_code == 404
    assert post(sources=["rte"], dev_dataset_id=tagging["id"]).status_code == 422
    assert post(sources=["rte"], method="adapters").status_code == 422
    # data_dir/sources, when it exists, is where the library's sources' training data lives
    sources_dir = service_settings.data_dir / "sources"
    sources_dir.mkdir()
    (sources_dir / "rte").symlink_to(shared_data / "rte")
    assert post(sources=["rte"]).status_code == 202
    missing = post(sources=["sst2"])
    assert missing.status_code == 422 and "no training data for source 'sst2'" in missing.json()["detail"]
    assert client.get("/transfers/nope").status_code == 404
    assert client.get("/transfers/nope/view").status_code == 404


MULTI = {**FAST, "adapter_learning_rate": 1e-3, "combination_learning_rate": 1e-2}


def test_a_multi_source_method_runs_one_combined_job_beside_the_baseline(client, service_settings, shared_data,
                                                                          tmp_path):
    target = upload(client, shared_data, tmp_path)
    ranking = client.post("/rankings", json={"dataset_id": target["id"], "method": "textemb", "top_k": 2}).json()
    run_queued_jobs(service_settings)
    ranked = client.get(f"/rankings/{ranking['id']}").json()["sources"]
    response = client.post("/transfers", json={"target_dataset_id": target["id"], "method": "pemt", "seeds": [1],
                                               "from_ranking": {"ranking_id": ranking["id"], "top_k": 2},
                                               "options": MULTI})
    assert response.status_code == 202, response.text
    batch = response.json()
    assert batch["method"] == "pemt" and len(batch["job_ids"]) == 2  # the baseline and one combined job
    assert batch["combined"]["state"] == "queued" and batch["combined"]["method"] == "pemt"
    assert [s["state"] for s in batch["sources"]] == ["queued", "queued"]
    assert run_queued_jobs(service_settings) == 2
    done = client.get(f"/transfers/{batch['id']}").json()
    assert done["state"] == "succeeded" and done["progress"] == 100.0, done
    combined = done["combined"]
    assert combined["state"] == "succeeded" and len(combined["scores"]) == 1
    assert combined["gain"] == pytest.approx(combined["mean"] - done["baseline"]["mean"])
    assert combined["weight_kind"] == "gate" and combined["trained_parameters"] > combined["method_parameters"] > 0
    names = [s["name"] for s in ranked[:2]]
    assert set(combined["weights"]) == set(names) and sum(combined["weights"].values()) == pytest.approx(1.0)
    assert [s["weight"] for s in done["sources"]] == [combined["weights"][n] for n in names]
    result = client.get(f"/jobs/{combined['job_id']}").json()["result"]
    assert result["role"] == "combined" and set(result["prior"]) == set(names)  # the ranking's scores as prior
    if ranked[0]["score"] > ranked[1]["score"]:
        assert result["prior"][names[0]] > result["prior"][names[1]]
    assert [a["reused"] for a in result["adapters"]] == [False, False]
    assert len([n for n in checkpoints(service_settings) if n.startswith("adapter-")
                and n.endswith(".safetensors")]) == 2
    page = client.get(f"/transfers/{batch['id']}/view")
    assert page.status_code == 200 and "PEMT" in page.text and 'id="gain-chart"' in page.text
    assert page.text.count('class="whisker"') == 3  # one bar: the combination


def test_multi_source_requests_are_validated(client, shared_data, tmp_path):
    target = upload(client, shared_data, tmp_path)
    base = {"target_dataset_id": target["id"], "sources": ["rte"], "options": FAST}
    assert client.post("/transfers", json={**base, "method": "scalearnx"}).status_code == 422
    bad = client.post("/transfers", json={**base, "method": "camtl", "options": {**FAST, "task_sampling": "x"}})
    assert bad.status_code == 422
    ok = client.post("/transfers", json={**base, "method": "camtl",
                                         "options": {**FAST, "freeze_encoder_layers": 1, "task_sampling": "uniform"}})
    assert ok.status_code == 202 and ok.json()["combined"]["method"] == "camtl"


def test_a_target_too_small_to_hold_out_a_dev_split_is_refused_at_submission(client, service_settings):
    """What the worker would refuse (no dev split can be held out of 2 rows) is refused with its message."""
    from embeddings.data import dataset_from_rows
    from embeddings.splits import hold_out_dev

    rows = [{"text": "good film", "label": "pos"}, {"text": "bad film", "label": "neg"}]
    target = client.post("/datasets", json={"rows": rows, "name": "two"}).json()
    refused = client.post("/transfers", json={"target_dataset_id": target["id"], "sources": ["rte"]})
    assert refused.status_code == 422 and refused.json()["field"] == "target_dataset_id"
    with pytest.raises(ValueError) as worker_says:
        hold_out_dev(dataset_from_rows(rows), seed=13)
    assert refused.json()["detail"] == str(worker_says.value)
    assert client.get("/jobs").json() == []  # nothing queued
    dev = client.post("/datasets", json={"rows": rows, "name": "two, dev"}).json()
    with_dev = client.post("/transfers", json={"target_dataset_id": target["id"], "dev_dataset_id": dev["id"],
                                               "sources": ["rte"]})
    assert with_dev.status_code == 202, with_dev.text  # a given dev split needs no hold-out
