"""The learned ranker on the tiny library: fitted on a synthetic transfer matrix in the library's regime,
validated leave-one-target-out, ranking in expected gain; its versions through the CLI and GET /ranker;
and the loop: a transfer job run through the service becomes a training row, and a refit a new version
whose rankings carry it."""

from __future__ import annotations

import csv
import json
from dataclasses import asdict
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.cli import main
from app.main import create_app
from embeddings.data import load_dataset
from embeddings.transfer import SOURCE_MAX_ROWS, SOURCE_REGIME
from library.errors import LibraryError
from library.methods import DEFAULT_METHOD, RANKING_METHODS
from library.ranker import fit_ranker, library_model_hash, service_regime
from library.ranker_store import RankerStore
from library.service import LibraryService
from library.settings import Settings, get_settings
from library.store import LibraryStore
from tests.app.conftest import LIBRARY_TASKS, write_csv_slice

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# each source's gain (% of the baseline) on every target, plus a per-target shift: a pattern to learn
SOURCE_GAIN = {"rte": -2.0, "sst2": 5.0, "sentence_polarity": 3.0, "stsb": 1.0, "conll2003_ner": -6.0}
TARGET_SHIFT = {"rte": 0.5, "sst2": -1.0, "sentence_polarity": 1.5, "stsb": -0.5, "conll2003_ner": 0.0}


def write_matrix(folder: Path, weights_hash: str, targets: tuple[str, ...] = LIBRARY_TASKS) -> Path:
    """A matrix over the tiny library's tasks (every other task as a source, two seeds) and a sidecar naming
    the library's encoder and the service's source regime."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "transfer_matrix.csv"
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["source", "target", "seed", "score", "baseline_score", "metric"])
        for target in targets:
            for seed, base in ((13, 60.0), (14, 62.0)):
                for source in LIBRARY_TASKS:
                    if source != target:
                        gain = SOURCE_GAIN[source] + TARGET_SHIFT[target] + (0.3 if seed == 14 else -0.3)
                        writer.writerow([source, target, seed, round(base * (1 + gain / 100), 4), base, "accuracy"])
    sidecar = {"model": {"name": "tiny", "weights_hash": weights_hash},
               "source_regime": {"options": asdict(SOURCE_REGIME), "max_rows": SOURCE_MAX_ROWS},
               "sources": {name: {"checkpoint": f"source-{name}.safetensors", "seconds": 64.0, "steps": 100}
                           for name in LIBRARY_TASKS}}
    path.with_suffix(".json").write_text(json.dumps(sidecar))
    return path


def library_hash(settings: Settings) -> str:
    store = LibraryStore(settings.resolved_database_url)
    try:
        found = library_model_hash(store)
        assert found is not None
        return found
    finally:
        store.close()


@pytest.fixture
def service(service_settings: Settings):
    svc = LibraryService.from_settings(service_settings)
    yield svc
    svc.close()


@pytest.fixture
def target(shared_data: Path, tmp_path: Path):
    return load_dataset(write_csv_slice(shared_data, "sst2", tmp_path / "target.csv", 40))


def test_cold_start_ranks_by_the_best_unlearned_method_and_says_so(service, target) -> None:
    ranking = service.rank(target, "learned", top_k=3)
    assert ranking.info["ranker_version"] is None and ranking.info["fallback"] == "ensemble"
    assert "ranked by ensemble" in ranking.info["note"]
    first = ranking.sources[0]
    assert first.details["learned"]["fallback"] == "ensemble" and "semb" in first.details
    assert RANKING_METHODS.get("learned").explain(first.details).startswith("no learned ranker yet: by ensemble")
    # only classification sources (the task-type filter applies after ranking every source)
    assert {s.task_type for s in ranking.sources} == {"classification"}


def test_fit_validates_and_ranks_in_expected_gain(service, service_settings, target, tmp_path) -> None:
    matrix = write_matrix(tmp_path / "m", library_hash(service_settings))
    with RankerStore(service_settings.resolved_database_url) as rstore:
        report = fit_ranker(service, rstore, matrix)
        assert report.activated and report.version is not None and report.version.id == 1
        validation = report.validation
        assert validation is not None and sorted(validation["targets"]) == sorted(LIBRARY_TASKS)
        methods = validation["methods"]
        for name in ("gbm", "forest", "ridge", "random", "datasize", "source_prior", "textemb", "semb", "taskemb",
                     "ensemble"):
            assert 0.0 <= methods[name]["ndcg"] <= 1.0, name
        for candidate in ("gbm", "forest", "ridge", "forest_compact", "forest_compact_log"):
            numbers = validation["candidates"][candidate]
            assert 0.0 <= numbers["coverage"] <= 1.0 and numbers["mae"] >= 0
        assert validation["nominal_coverage"] == pytest.approx(0.8)
        bars = validation["criteria"]
        assert bars["candidate"] == validation["chosen"] and set(bars["over"]) >= {"datasize", "source_prior"}
        assert bars["over"]["datasize"] == pytest.approx(bars["ndcg"] - methods["datasize"]["ndcg"])
        # nested selection: each held-out target ranked by the candidate chosen without it, and judged on that
        nested = validation["nested_choice"]
        assert sorted(nested) == sorted(LIBRARY_TASKS) and set(nested.values()) <= set(validation["candidates"])
        for t, candidate in nested.items():
            assert methods["nested"]["per_target"].get(t) == methods[candidate]["per_target"].get(t)
        assert bars["judged_on"] == "nested" and bars["ndcg"] == pytest.approx(methods["nested"]["ndcg"])
        assert bars["may_be_default"] == (bars["beats_every_unlearned"] and bars["headline_targets"] >= 5)
        assert service.default_method() == ("learned" if bars["may_be_default"] else DEFAULT_METHOD)
        trained = report.version.trained_on
        assert trained["rows"] == 20 and trained["targets"] == 5 and trained["regime"] == service_regime(
            library_hash(service_settings)) and trained["user_results"] == 0

        ranking = service.rank(target, "learned", top_k=10)
        assert ranking.info["ranker_version"] == 1 and "fallback" not in ranking.info
        gains = [s.score for s in ranking.sources]
        assert gains == sorted(gains, reverse=True)
        for s in ranking.sources:
            part = s.details["learned"]
            assert part["low"] <= part["expected_gain"] <= part["high"] and 0.0 <= part["p_helps"] <= 1.0
            assert part["ranker_version"] == 1 and 1 <= len(part["reasons"]) <= 3
            assert part["unlikely_to_help"] == (part["p_helps"] < 0.5)
            assert "prior_gain" in part["features"] and "semb_rank" in part["features"]
            json.dumps(part, allow_nan=False)  # storable as JSON anywhere (PostgreSQL's JSONB has no NaN)
        text = RANKING_METHODS.get("learned").explain(ranking.sources[0].details)
        assert "expected (" in text and "probability" in text
        # the matrix's pattern: sst2 helps every target most (the target is a 40-row slice, not the task itself)
        assert ranking.sources[0].name == "sst2" and ranking.sources[0].score > 0

        again = fit_ranker(service, rstore, matrix)  # the same rows: not worse, so activated
        assert again.activated and again.version is not None and again.version.id == 2
        assert again.compared_with is not None and again.compared_with["version"] == 1
        assert [v.id for v in rstore.versions() if v.active] == [2]


def test_a_matrix_of_another_regime_is_not_learned_from(service, service_settings, tmp_path) -> None:
    matrix = write_matrix(tmp_path / "m", "0123456789abcdef")  # another encoder's weights
    with RankerStore(service_settings.resolved_database_url) as rstore, pytest.raises(LibraryError) as caught:
        fit_ranker(service, rstore, matrix, use_rows=False)
    assert "is not the library's" in str(caught.value)


def test_cli_fit_list_use_and_get_ranker(service_settings, shared_data, tmp_path, monkeypatch, capsys) -> None:
    matrix = write_matrix(tmp_path / "m", library_hash(service_settings))
    monkeypatch.setenv("TASKRANK_DATA_DIR", str(service_settings.data_dir))
    monkeypatch.setenv("TASKRANK_MODEL", service_settings.model)
    monkeypatch.setenv("TASKRANK_DEVICE", "cpu")
    monkeypatch.setenv("TASKRANK_TRANSFER_MATRIX", str(matrix))
    monkeypatch.delenv("TASKRANK_DATABASE_URL", raising=False)
    get_settings.cache_clear()
    try:
        assert main(["ranker", "list"]) == 0
        assert "no ranker fitted yet" in capsys.readouterr().out
        assert main(["ranker", "fit", "--no-esm"]) == 0
        out = capsys.readouterr().out
        assert "ranker version 1" in out and "source_prior" in out and "coverage (nominal 80%)" in out
        assert "is now active" in out
        assert main(["ranker", "fit", "--no-esm", "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["version"]["version"] == 2
        assert main(["ranker", "use", "1"]) == 0 and "version 1 is now active" in capsys.readouterr().out
        csv_path = write_csv_slice(shared_data, "sst2", tmp_path / "mine.csv", 40)
        assert main(["rank", str(csv_path), "--method", "learned", "--top", "3"]) == 0
        out = capsys.readouterr().out
        assert "learned ranker version 1" in out and "expected gain" in out and "est. min" in out
        assert "% expected (" in out and "probability" in out
        assert main(["ranker", "list", "--json"]) == 0
        listed = json.loads(capsys.readouterr().out)
        assert [(v["version"], v["active"]) for v in listed] == [(1, True), (2, False)]
        assert main(["ranker", "use", "9"]) == 1
    finally:
        get_settings.cache_clear()
    with TestClient(create_app(service_settings)) as client:
        body = client.get("/ranker").json()
    assert body["active"]["version"] == 1 and [v["version"] for v in body["versions"]] == [1, 2]
    assert body["active"]["trained_on"]["rows"] == 20 and body["validation_table"][0]["method"] in (
        "gbm", "forest", "ridge", "forest_compact", "forest_compact_log")
    assert "prior_gain" in body["features"] and body["transfer_results"] == 0
    assert body["criteria"]["candidate"] == body["active"]["spec"]["candidate"]


def test_api_page_client_frame_and_cost_advice(service, service_settings, shared_data, tmp_path) -> None:
    from app.client import ranking_frame
    from tests.app.test_transfers import run_queued_jobs, upload

    matrix = write_matrix(tmp_path / "m", library_hash(service_settings))
    settings = service_settings.model_copy(update={"transfer_matrix": matrix})
    (settings.data_dir / "checkpoints").mkdir(exist_ok=True)
    (settings.data_dir / "checkpoints" / "source-sst2.safetensors").write_bytes(b"cached")
    with RankerStore(settings.resolved_database_url) as rstore:
        fit_ranker(service, rstore, matrix, use_rows=False)
    with TestClient(create_app(settings)) as client:
        target = upload(client, shared_data, tmp_path)
        posted = client.post("/rankings", json={"dataset_id": target["id"], "method": "learned", "top_k": 4}).json()
        run_queued_jobs(settings)
        body = client.get(f"/rankings/{posted['id']}").json()
        assert body["info"]["ranker_version"] == 1 and "shipped matrix" in body["info"]["time_basis"]
        estimates = body["info"]["estimates"]
        assert set(estimates) == {s["name"] for s in body["sources"]}
        # a cached checkpoint: only the target's fine-tunings remain (2 seeds of 2 steps of 16 rows here)
        assert estimates["sst2"]["checkpoint_cached"] and not estimates["rte"]["checkpoint_cached"]
        assert estimates["sst2"]["minutes"] < estimates["rte"]["minutes"]
        assert estimates["sst2"]["minutes"] == pytest.approx(0.02 * (2 * 2 * 16) / 60, abs=0.01)
        by_minute = client.get(f"/rankings/{posted['id']}", params={"sort": "gain_per_minute"}).json()["sources"]
        per_minute = [estimates[s["name"]]["gain_per_minute"] for s in by_minute]
        assert per_minute == sorted(per_minute, reverse=True)
        frame = ranking_frame(body)
        assert {"expected_gain", "low", "high", "p_helps", "why", "minutes", "gain_per_minute"} <= set(frame.columns)
        assert frame["why"].str.len().min() > 0

        page = client.get(f"/rankings/{posted['id']}/view")
        assert page.status_code == 200
        html = page.text
        assert "Expected gain" in html and "P(helps)" in html and 'class="interval"' in html
        assert "Learned ranker version 1" in html and 'id="sort-per-minute"' in html and "data-minutes=" in html
        sorted_page = client.get(f"/rankings/{posted['id']}/view?sort=gain_per_minute").text
        assert "Sorted by expected gain per minute" in sorted_page
        first = min(estimates, key=lambda n: -(estimates[n]["gain_per_minute"] or -1e9))
        assert sorted_page.index(f'<td class="name">{first}') < min(
            sorted_page.index(f'<td class="name">{n}') for n in estimates if n != first)


FAST = {"epochs": 1, "batch_size": 8, "max_length": 32, "target_max_rows": 24, "dev_max_rows": 12}


@pytest.mark.slow
def test_the_loop_a_transfer_becomes_a_row_and_a_refit_a_new_version(service_settings, shared_data, tmp_path):
    from tests.app.test_transfers import run_queued_jobs, upload

    matrix = write_matrix(tmp_path / "m", library_hash(service_settings), targets=("rte", "stsb", "conll2003_ner"))
    settings = service_settings.model_copy(update={"transfer_matrix": matrix, "ranker_refit_after": 1})
    with TestClient(create_app(settings)) as client:
        service = LibraryService.from_settings(settings)
        with RankerStore(settings.resolved_database_url) as rstore:
            assert fit_ranker(service, rstore, matrix).version.id == 1  # type: ignore[union-attr]
        service.close()
        target = upload(client, shared_data, tmp_path)
        first = client.post("/rankings", json={"dataset_id": target["id"], "method": "learned", "top_k": 3}).json()
        run_queued_jobs(settings)
        first = client.get(f"/rankings/{first['id']}").json()
        assert first["info"]["ranker_version"] == 1 and first["sources"][0]["details"]["learned"]["expected_gain"]

        # the sources train in the service's default regime (the ranker's), on the tiny model
        batch = client.post("/transfers", json={"target_dataset_id": target["id"], "seeds": [1],
                                                "sources": ["rte"], "options": FAST}).json()
        assert run_queued_jobs(settings) == 2  # the baseline and the source
        done = client.get(f"/transfers/{batch['id']}").json()
        assert done["state"] == "succeeded"
        with RankerStore(settings.resolved_database_url) as rstore:
            rows = rstore.results()
            assert len(rows) == 1 and rows[0].source == "rte" and rows[0].target == target["name"]
            assert rows[0].regime == service_regime(library_hash(settings)) and rows[0].features
            assert rows[0].relative_gain == pytest.approx(done["sources"][0]["relative_gain"])
            assert rows[0].target_facts["rows"] == 40
        fits = [j for j in client.get("/jobs").json() if j["kind"] == "ranker_fit"]
        assert len(fits) == 1 and fits[0]["queue"] == "train"  # refit queued after 1 new result
        assert run_queued_jobs(settings) == 1
        fit = client.get(f"/jobs/{fits[0]['id']}").json()
        assert fit["state"] == "succeeded", fit["error"]
        assert fit["result"]["version"] == 2 and fit["result"]["activated"]

        ranker = client.get("/ranker").json()["active"]
        assert ranker["version"] == 2 and ranker["trained_on"]["user_results"] == 1
        assert f"{target['name']} (yours" in " ".join(ranker["trained_on"]["target_names"])
        second = client.post("/rankings", json={"dataset_id": target["id"], "method": "learned", "top_k": 3})
        assert second.status_code == 202 and second.json()["id"] != first["id"]  # the version is in the cache key
        run_queued_jobs(settings)
        second = client.get(f"/rankings/{second.json()['id']}").json()
        assert second["info"]["ranker_version"] == 2
        assert all(s["details"]["learned"]["ranker_version"] == 2 for s in second["sources"])


def test_the_first_cold_learned_ranking_queues_the_first_fit_from_the_matrix(service_settings, shared_data,
                                                                             tmp_path) -> None:
    from library.jobs import JobStore
    from tests.app.test_transfers import run_queued_jobs, upload
    from worker.job_kinds import JOB_KINDS

    matrix = write_matrix(tmp_path / "m", library_hash(service_settings))
    settings = service_settings.model_copy(update={"transfer_matrix": matrix, "ranker_esm_features": False})
    with TestClient(create_app(settings)) as client:
        target = upload(client, shared_data, tmp_path)
        posted = client.post("/rankings", json={"dataset_id": target["id"], "method": "learned", "top_k": 3}).json()
        run_queued_jobs(settings)
        cold = client.get(f"/rankings/{posted['id']}").json()
        assert cold["info"]["fallback"] == "ensemble" and cold["info"]["ranker_version"] is None
        fit_job = cold["info"]["first_fit_job"]
        assert "first fit from the shipped transfer matrix is queued" in cold["info"]["note"]
        job = client.get(f"/jobs/{fit_job}").json()
        assert job["kind"] == "ranker_fit" and job["state"] == "queued"
        assert JOB_KINDS["ranker_fit"].queue == job["queue"]
        # another cold ranking while the fit waits queues no second fit
        other = client.post("/rankings", json={"dataset_id": target["id"], "method": "learned", "top_k": 2}).json()
        store = JobStore(settings.resolved_database_url)
        try:
            assert [j.id for j in store.unfinished_jobs() if j.kind == "ranker_fit"] == [fit_job]
        finally:
            store.close()
        run_queued_jobs(settings)  # the second ranking, then the fit
        assert client.get(f"/jobs/{fit_job}").json()["state"] == "succeeded"
        assert "first_fit_job" not in client.get(f"/rankings/{other['id']}").json()["info"]
        warm = client.post("/rankings", json={"dataset_id": target["id"], "method": "learned", "top_k": 3}).json()
        run_queued_jobs(settings)
        body = client.get(f"/rankings/{warm['id']}").json()
        assert body["info"]["ranker_version"] == 1 and "fallback" not in body["info"]


def test_learned_becomes_the_default_method_only_while_its_active_version_validated_as_one(
        service, service_settings, shared_data, tmp_path) -> None:
    from tests.app.test_transfers import run_queued_jobs, upload

    matrix = write_matrix(tmp_path / "m", library_hash(service_settings))
    settings = service_settings.model_copy(update={"transfer_matrix": matrix, "ranker_esm_features": False})
    with RankerStore(settings.resolved_database_url) as rstore:
        first = fit_ranker(service, rstore, matrix, use_rows=False).version
        assert first is not None
        plain = rstore.add_version(model=rstore.model_bytes(first.id) or b"", activate=True, status="kept",
                                   regime=first.regime, sklearn_version=first.sklearn_version,
                                   spec={**first.spec, "default": False}, trained_on=first.trained_on,
                                   validation=first.validation, note="validated, not as the default")
        best = rstore.add_version(model=rstore.model_bytes(first.id) or b"", activate=True, status="kept",
                                  regime=first.regime, sklearn_version=first.sklearn_version,
                                  spec={**first.spec, "default": True}, trained_on=first.trained_on,
                                  validation=first.validation, note="validated as the default")
        assert service.default_method() == "learned"
        with TestClient(create_app(settings)) as client:
            assert client.get("/ranker").json()["default_method"] == "learned"
            target = upload(client, shared_data, tmp_path)
            posted = client.post("/rankings", json={"dataset_id": target["id"], "top_k": 3}).json()
            assert posted["method"] == "learned"
            run_queued_jobs(settings)
            body = client.get(f"/rankings/{posted['id']}").json()
            assert body["method"] == "learned" and body["info"]["ranker_version"] == best.id
            page = client.get("/").text
            assert page.index('value="learned"') < page.index('value="ensemble"')  # first, so checked
            rstore.activate(plain.id)  # a rollback to a version that is not the default
            assert client.get("/ranker").json()["default_method"] == DEFAULT_METHOD
            again = client.post("/rankings", json={"dataset_id": target["id"], "top_k": 3}).json()
            assert again["method"] == "ensemble"
