"""The server-rendered pages, the ranking exports and the library map, over the real app (TestClient)."""

from __future__ import annotations

import csv
import io
import math
import re
import shutil

import numpy as np
import pytest
from fastapi.testclient import TestClient
from markupsafe import escape as html_escape

from app.main import create_app
from app.routes.pages import bar_chart, map_figure
from library.build import library_options
from library.jobs import JobStore
from library.projection import fit_pca_2d, pca_2d
from library.store import LibraryStore
from library.target_cache import TargetEmbeddingCache, find_target_embedding, target_cache_path
from tests.app.conftest import LIBRARY_TASKS, write_csv_slice
from tests.app.test_api import run_queued_jobs


@pytest.fixture
def client(service_settings):
    with TestClient(create_app(service_settings)) as test_client:
        yield test_client


def upload_sst2(client, shared_data, tmp_path, rows: int = 40) -> dict:
    csv_path = write_csv_slice(shared_data, "sst2", tmp_path / "sst2.csv", rows)
    response = client.post("/datasets", files={"file": ("reviews.csv", csv_path.read_bytes())}, data={"name": "reviews"})
    assert response.status_code == 201, response.text
    return response.json()


@pytest.fixture
def ranked(client, service_settings, shared_data, tmp_path) -> dict:
    """An ensemble ranking of an SST-2 slice, run to completion the way a worker runs it."""
    dataset = upload_sst2(client, shared_data, tmp_path)
    submitted = client.post("/rankings", json={"dataset_id": dataset["id"], "method": "ensemble", "top_k": 3})
    assert submitted.status_code == 202, submitted.text
    assert run_queued_jobs(service_settings) == 1
    ranking = client.get(f"/rankings/{submitted.json()['id']}").json()
    assert ranking["state"] == "succeeded"
    return ranking


def finite_points(points: list[dict]) -> bool:
    return all(math.isfinite(p["x"]) and math.isfinite(p["y"]) for p in points)


# -- projection ------------------------------------------------------------------------------------

def test_pca_2d_is_centred_ordered_and_deterministic():
    rng = np.random.default_rng(0)
    matrix = rng.normal(size=(12, 6)) * np.array([5.0, 3.0, 1.0, 0.5, 0.2, 0.1])
    xy = pca_2d(matrix)
    assert xy.shape == (12, 2) and np.all(np.isfinite(xy))
    assert np.allclose(xy.mean(axis=0), 0.0, atol=1e-9)
    assert xy[:, 0].var() >= xy[:, 1].var()
    order = rng.permutation(12)
    assert np.allclose(pca_2d(matrix[order]), xy[order])  # row order changes nothing, signs included
    components = fit_pca_2d(matrix).components
    for axis in components:  # the sign convention: the largest loading is positive
        assert axis[np.argmax(np.abs(axis))] > 0
    full = np.linalg.svd(matrix - matrix.mean(axis=0), full_matrices=False)[0][:, :2] * \
        np.linalg.svd(matrix - matrix.mean(axis=0), compute_uv=False)[:2]
    assert np.allclose(np.abs(xy), np.abs(full))


def test_pca_2d_degenerate_inputs():
    assert pca_2d(np.zeros((0, 4))).shape == (0, 2)
    assert np.allclose(pca_2d(np.ones((1, 4))), 0.0)
    assert np.allclose(pca_2d(np.ones((3, 4))), 0.0)  # no variance: every point at the origin
    line = np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]])
    xy = pca_2d(line)
    assert np.allclose(xy[:, 1], 0.0) and xy[2, 0] > xy[0, 0]  # one direction; the second axis stays zero


# -- pages -----------------------------------------------------------------------------------------

def test_upload_page(client):
    response = client.get("/")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    html = response.text
    assert "<title>Rank source tasks · taskrank</title>" in html
    for href in ('href="/"', 'href="/library/view"', 'href="/jobs/view"', 'href="/docs"'):
        assert href in html  # the nav bar
    assert 'id="upload-form"' in html and 'type="file"' in html and 'id="paste"' in html
    for method in ("textemb", "semb", "taskemb", "ensemble"):
        assert f'value="{method}"' in html
    assert 'id="top-k"' in html and 'id="all-class"' in html and 'id="task-type"' in html
    assert "5 source tasks" in html
    assert '"sentence1"' in html  # the loader's column aliases, for the mapping
    assert 'src="/static/upload.js"' in html and 'href="/static/style.css"' in html
    assert "http://" not in html.replace("http://testserver", "") and "https://" not in html  # nothing external


def test_static_assets(client):
    for path, kind in (("/static/style.css", "text/css"), ("/static/upload.js", "javascript"),
                       ("/static/job.js", "javascript"), ("/static/favicon.svg", "image/svg+xml")):
        response = client.get(path)
        assert response.status_code == 200 and kind in response.headers["content-type"], path
    css = client.get("/static/style.css").text
    assert "@media" in css and "@import" not in css and "url(" not in css  # no web fonts or remote assets


def test_library_page_lists_every_task_with_provenance_and_a_map(client):
    tasks = client.get("/library/tasks").json()
    html = client.get("/library/view").text
    for task in tasks:
        assert f">{task['name']}<" in html
        assert html_escape(task["provenance"]["source"]) in html
    assert "licence" in html.lower() or "license" in html.lower()
    assert 'id="task-map"' in html and html.count('class="point"') == len(LIBRARY_TASKS)
    assert "PCA of the L2-normalised TextEmb vectors" in html
    taskemb = client.get("/library/view?method=taskemb")
    assert taskemb.status_code == 200 and "Fisher components" in taskemb.text
    assert client.get("/library/view?method=nope").status_code == 422


@pytest.mark.parametrize("method", ["textemb", "semb", "taskemb", "ensemble"])
def test_library_map_has_one_finite_point_per_task(client, method):
    response = client.get(f"/library/map?method={method}")
    assert response.status_code == 200
    body = response.json()
    names = sorted(p["name"] for p in body["points"])
    assert names == sorted(LIBRARY_TASKS) and body["missing"] == []
    assert finite_points(body["points"])
    assert len({(round(p["x"], 6), round(p["y"], 6)) for p in body["points"]}) == len(LIBRARY_TASKS)
    assert body["target"] is None
    assert body["basis"] == ("textemb" if method == "ensemble" else method)
    if method == "taskemb":
        assert len(body["components"]) == 4  # 2 layers x 2 (the tagger has no cls_output)
    assert client.get(f"/library/map?method={method}").json() == body  # deterministic


def test_ranking_pages_exports_and_map(client, ranked, service_settings):
    ranking_id, job_id = ranked["id"], ranked["job_id"]
    names = [s["name"] for s in ranked["sources"]]

    job_html = client.get(f"/jobs/{job_id}/view").text
    assert f'data-job-id="{job_id}"' in job_html and f'data-ranking-id="{ranking_id}"' in job_html
    assert 'id="job-bar"' in job_html and "succeeded" in job_html and 'src="/static/job.js"' in job_html

    response = client.get(f"/rankings/{ranking_id}/view")
    assert response.status_code == 200
    html = response.text
    assert "<title>Ranking · reviews · taskrank</title>" in html
    rows = re.findall(r'<td class="name">([^<]+)</td>', html)
    assert rows == names
    assert 'id="score-chart"' in html and html.count('class="bar"') == 3
    assert 'id="task-map"' in html and 'id="map-target"' in html and "target: reviews" in html
    assert html.count('class="point ranked"') == 3
    assert "TextEmb vectors" in html  # the caption says what the ensemble's map shows
    for part in ("TextEmb", "SEmb", "TaskEmb"):
        assert f">{part}</th>" in html
    button = re.search(r'<button[^>]*id="transfer-button"[^>]*>', html).group(0)
    assert "disabled" not in button and f'data-ranking="{ranking_id}"' in button and 'data-top="3"' in button
    assert '<script src="/static/transfer_button.js"></script>' in html
    assert f'href="/rankings/{ranking_id}/export.csv"' in html and f'href="/rankings/{ranking_id}/export.json"' in html

    exported = client.get(f"/rankings/{ranking_id}/export.csv")
    assert exported.status_code == 200 and exported.headers["content-type"].startswith("text/csv")
    assert f'filename="ranking-{ranking_id}.csv"' in exported.headers["content-disposition"]
    table = list(csv.DictReader(io.StringIO(exported.text)))
    assert [r["name"] for r in table] == names and [int(r["rank"]) for r in table] == [1, 2, 3]
    assert [float(r["score"]) for r in table] == [s["score"] for s in ranked["sources"]]
    assert int(table[0]["taskemb_rank"]) == ranked["sources"][0]["details"]["taskemb"]["rank"]
    assert set(table[0]) >= {"task_type", "num_train", "textemb_similarity", "semb_rank"}

    as_json = client.get(f"/rankings/{ranking_id}/export.json")
    assert as_json.status_code == 200 and "attachment" in as_json.headers["content-disposition"]
    assert as_json.json()["sources"] == ranked["sources"] and as_json.json()["id"] == ranking_id

    mapped = client.get(f"/library/map?ranking_id={ranking_id}").json()
    assert mapped["method"] == "ensemble" and mapped["basis"] == "textemb"
    assert len(mapped["points"]) == len(LIBRARY_TASKS) and finite_points(mapped["points"])
    target = mapped["target"]
    assert target["name"] == "reviews" and math.isfinite(target["x"]) and math.isfinite(target["y"])
    # the library's own points do not move when a target is added
    plain = client.get("/library/map?method=ensemble").json()
    assert plain["points"] == mapped["points"]
    for method in ("semb", "taskemb"):  # the ensemble cached every part of the target
        assert client.get(f"/library/map?ranking_id={ranking_id}&method={method}").json()["target"] is not None

    # the map reads the worker's cache file by the worker's own key (no scan needed)
    store = LibraryStore(service_settings.resolved_database_url)
    options = library_options(store)
    model_hash = store.keys()[0].model_hash
    store.close()
    for part in ("textemb", "semb", "taskemb"):
        worker_path = TargetEmbeddingCache(service_settings.paths.embeddings).path(
            ranked["target"]["hash"], model_hash, part, options.options_hash)
        assert worker_path.is_file()
        assert target_cache_path(service_settings.data_dir, ranked["target"]["hash"], model_hash, part,
                                 options.options_hash) == worker_path
        found = find_target_embedding(service_settings.data_dir, ranked["target"]["hash"], part, model_hash,
                                      options.options_hash)
        assert found is not None and found.method == part

    jobs_html = client.get("/jobs/view").text
    assert f'data-job-id="{job_id}"' in jobs_html and f'href="/rankings/{ranking_id}/view"' in jobs_html
    assert "reviews" in jobs_html and "succeeded" in jobs_html

    shutil.rmtree(service_settings.data_dir / "embeddings")  # cache cleared: no target marker, no error
    mapped = client.get(f"/library/map?ranking_id={ranking_id}").json()
    assert mapped["target"] is None and "cache" in mapped["target_note"] and len(mapped["points"]) == 5
    html = client.get(f"/rankings/{ranking_id}/view").text
    assert 'id="task-map"' in html and 'id="map-target"' not in html and "not shown" in html


def test_taskemb_ranking_projects_the_target(client, service_settings, shared_data, tmp_path):
    dataset = upload_sst2(client, shared_data, tmp_path, rows=30)
    submitted = client.post("/rankings", json={"dataset_id": dataset["id"], "method": "taskemb", "all_class": True})
    run_queued_jobs(service_settings)
    ranking_id = submitted.json()["id"]
    html = client.get(f"/rankings/{ranking_id}/view").text
    assert 'id="map-target"' in html and "Fisher components" in html
    assert html.count('class="point ranked"') == len(LIBRARY_TASKS)  # all classes: every task is ranked
    assert 'layer_' in html  # per-component columns
    mapped = client.get(f"/library/map?ranking_id={ranking_id}").json()
    assert mapped["basis"] == "taskemb" and mapped["target"] is not None


def test_unfinished_and_failed_rankings(client, service_settings, shared_data, tmp_path):
    dataset = upload_sst2(client, shared_data, tmp_path, rows=20)
    submitted = client.post("/rankings", json={"dataset_id": dataset["id"], "method": "textemb"}).json()
    response = client.get(f"/rankings/{submitted['id']}/view", follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == f"/jobs/{submitted['job_id']}/view"
    assert client.get(f"/rankings/{submitted['id']}/export.csv").status_code == 409
    job_html = client.get(f"/jobs/{submitted['job_id']}/view").text
    assert "queued" in job_html and 'id="job-error"' in job_html

    store = JobStore(service_settings.resolved_database_url)
    store.fail_job(submitted["job_id"], "the encoder ran out of <memory>")
    store.close()
    job_html = client.get(f"/jobs/{submitted['job_id']}/view").text
    assert "the encoder ran out of &lt;memory&gt;" in job_html  # shown, escaped
    ranking_html = client.get(f"/rankings/{submitted['id']}/view").text
    assert "The ranking failed" in ranking_html and "out of &lt;memory&gt;" in ranking_html
    assert 'id="download-csv"' not in ranking_html


def test_unknown_ids_are_404(client):
    for path in ("/rankings/nope/view", "/jobs/nope/view"):
        response = client.get(path)
        assert response.status_code == 404 and "text/html" in response.headers["content-type"]
        assert "Not found" in response.text and 'href="/library/view"' in response.text
    for path in ("/rankings/nope/export.csv", "/rankings/nope/export.json", "/library/map?ranking_id=nope"):
        assert client.get(path).status_code == 404, path
    assert client.get("/jobs/view").status_code == 200  # not taken for a job id


def test_jobs_page_when_empty(client):
    html = client.get("/jobs/view").text
    assert "<title>Jobs · taskrank</title>" in html and "No jobs yet" in html


def test_chart_geometry_stays_in_frame():
    sources = [{"rank": i + 1, "name": f"task_{i}", "task_type": "classification", "score": s, "num_train": 10,
                "details": {}} for i, s in enumerate([0.9, 0.2, -0.1])]
    chart = bar_chart(sources, "textemb")
    assert len(chart["bars"]) == 3 and all(b["w"] >= 1 for b in chart["bars"])
    assert all(chart["plot_x0"] <= b["x"] <= chart["plot_x1"] for b in chart["bars"])
    points = [{"id": i, "name": f"a_rather_long_task_name_{i}", "task_type": "regression", "num_train": 5,
               "x": float(i % 3), "y": float(i // 3)} for i in range(9)]
    figure = map_figure({"points": points, "target": {"name": "mine", "x": 1.0, "y": 1.0},
                         "explained_variance": [0.5, 0.3]}, {"a_rather_long_task_name_0": 1})
    assert len(figure["marks"]) == 9 and figure["target"] is not None
    for mark in figure["marks"]:
        assert 0 <= mark["cx"] <= figure["width"] and 0 <= mark["cy"] <= figure["height"]
    assert figure["marks"][0]["label"].startswith("1. ")


def test_single_method_ranking_page(client, service_settings, shared_data, tmp_path):
    dataset = upload_sst2(client, shared_data, tmp_path, rows=25)
    submitted = client.post("/rankings", json={"dataset_id": dataset["id"], "method": "semb", "top_k": 2}).json()
    run_queued_jobs(service_settings)
    html = client.get(f"/rankings/{submitted['id']}/view").text
    assert ">SEmb</th>" in html and "centring on the library's mean" in html and "The score is that similarity" in html
    assert html.count('class="point ranked"') == 2 and 'id="map-target"' in html
    assert "PCA of the L2-normalised SEmb vectors" in html


# -- transfer results: zero gains and seed noise ---------------------------------------------------

def finished_batch(client, service_settings, means: dict[str, list[float]]) -> str:
    """A transfer batch whose jobs are marked done with these per-seed scores (role -> scores)."""
    rows = [{"text": f"film {i}", "label": "pos" if i % 2 else "neg"} for i in range(20)]
    target = client.post("/datasets", json={"rows": rows, "name": "films"}).json()
    batch = client.post("/transfers", json={"target_dataset_id": target["id"], "seeds": [1, 2],
                                            "sources": [k for k in means if k != "baseline"]}).json()
    store = JobStore(service_settings.resolved_database_url)
    for job_id in batch["job_ids"]:
        job = store.start_job(job_id)
        role = job.params["role"]
        scores = means["baseline" if role == "baseline" else job.params["source"]]
        store.succeed_job(job_id, {"batch_id": batch["id"], "role": role, "source": job.params.get("source"),
                                   "main_metric": "accuracy", "scores": scores})
    store.close()
    return batch["id"]


def test_a_gain_that_rounds_to_zero_shows_as_zero(client, service_settings):
    batch = finished_batch(client, service_settings, {"baseline": [70.0, 72.0], "rte": [70.001, 71.998],
                                                      "sst2": [75.0, 77.0]})
    html = client.get(f"/transfers/{batch}/view").text
    assert "-0.00" not in html and "-0.0%" not in html
    assert re.search(r'<span class="gain-zero">0\.00</span>', html) and "0.0%" in html
    assert '<span class="gain-pos">+5.00</span>' in html


def test_seed_spread_that_swamps_the_sources_is_called_out(client, service_settings):
    noisy = finished_batch(client, service_settings, {"baseline": [60.0, 70.0], "rte": [61.0, 71.0],
                                                      "sst2": [62.0, 70.0]})
    html = client.get(f"/transfers/{noisy}/view").text
    assert 'id="seed-noise"' in html and "cannot tell the sources apart" in html
    clear = finished_batch(client, service_settings, {"baseline": [70.0, 70.5], "rte": [70.0, 70.4],
                                                      "sst2": [80.0, 80.3]})
    assert 'id="seed-noise"' not in client.get(f"/transfers/{clear}/view").text


def test_map_labels_never_overlap_in_a_crowd_around_the_target():
    """30 sources packed around the target: every label drawn has a spot of its own (issue 18)."""
    import itertools
    import random

    from app.rendering import text_width
    from app.routes.pages import map_figure

    rng = random.Random(3)
    points = [{"name": f"source_task_{i}", "task_type": "classification", "num_train": 100,
               "x": rng.gauss(0, 0.05), "y": rng.gauss(0, 0.05)} for i in range(30)]
    points.append({"name": "far_away", "task_type": "regression", "num_train": 10, "x": 5.0, "y": 5.0})
    figure = map_figure({"points": points, "target": {"name": "mine", "x": 0.0, "y": 0.0}},
                        ranked={"source_task_0": 1, "source_task_1": 2})
    font = figure["font"]
    boxes = []
    for m in [figure["target"], *figure["marks"]]:
        if m.get("label"):
            w, h = text_width(m["label"], font), font + 3
            cy = m["ly"] - font * 0.35  # the box's centre (map_figure puts the baseline 0.35 em below it)
            boxes.append((m["lx"] - w / 2, cy - h / 2, m["lx"] + w / 2, cy + h / 2))
    assert figure["target"]["label"] and all(m["label"] for m in figure["marks"] if m["rank"])
    assert any(m["label"] is None for m in figure["marks"])  # the crowd: some names only in tooltips
    for a, b in itertools.combinations(boxes, 2):
        assert min(a[2], b[2]) - max(a[0], b[0]) <= 0.01 or min(a[3], b[3]) - max(a[1], b[1]) <= 0.01, (a, b)
