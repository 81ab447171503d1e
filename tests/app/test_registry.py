"""Adding a ranking method is one module and one registry entry: a toy method registered here is
offered by the CLI, the API schema and the upload page, and ranks through the service unchanged."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.cli import main
from app.main import create_app
from library.methods import RANKING_METHODS, Entry, RankContext, RankingMethod, assign_ranks
from tests.app.conftest import write_csv_slice
from tests.app.test_api import run_queued_jobs

ROOT = Path(__file__).resolve().parents[2]


def _largest_first(ctx: RankContext) -> list[Entry]:
    return assign_ranks([Entry(task=t, score=float(t.num_train), similarity=0.0) for t in ctx.eligible.values()])


@pytest.fixture
def toy_method():
    method = RankingMethod(name="toy_size", label="ToySize", description="largest source first (a test method)",
                           needs=("semb",), rank=_largest_first, explain=lambda details: "by size",
                           score_label="rows", map_basis="semb")
    RANKING_METHODS.register(method)
    yield method
    RANKING_METHODS.unregister(method.name)


def test_a_registered_method_is_offered_everywhere_and_ranks(toy_method, service_settings, shared_data, tmp_path,
                                                             capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["rank", "--help"])
    assert exit_info.value.code == 0
    assert "toy_size" in capsys.readouterr().out  # a CLI choice

    with TestClient(create_app(service_settings)) as client:
        schema = client.get("/openapi.json").json()["components"]["schemas"]["RankingCreate"]
        assert "toy_size" in method_enum(schema)  # the OpenAPI enum
        assert "ToySize" in client.get("/").text  # a page offers it
        csv_path = write_csv_slice(shared_data, "sst2", tmp_path / "sst2.csv", 30)
        dataset = client.post("/datasets", files={"file": ("sst2.csv", csv_path.read_bytes())}).json()
        submitted = client.post("/rankings", json={"dataset_id": dataset["id"], "method": "toy_size", "top_k": 5})
        assert submitted.status_code == 202, submitted.text
        assert run_queued_jobs(service_settings) == 1
        ranking = client.get(f"/rankings/{submitted.json()['id']}").json()
        assert ranking["state"] == "succeeded", ranking["error"]
        sizes = [s["num_train"] for s in ranking["sources"]]
        assert sizes == sorted(sizes, reverse=True) and len(sizes) >= 2
        assert "ToySize" in client.get(f"/rankings/{submitted.json()['id']}/view").text


def method_enum(schema: dict) -> list[str]:
    """The ranking methods of `RankingCreate.method` (optional, so the enum is the non-null branch of anyOf)."""
    field = schema["properties"]["method"]
    return next(b["enum"] for b in field["anyOf"] if "enum" in b)


def test_an_unregistered_method_is_refused_at_the_edge(service_settings):
    with TestClient(create_app(service_settings)) as client:
        response = client.post("/rankings", json={"dataset_id": "x", "method": "toy_size"})
        assert response.status_code == 422
        assert "toy_size" not in method_enum(client.get("/openapi.json").json()["components"]["schemas"][
            "RankingCreate"])


def test_registry_rejects_bad_specs(toy_method):
    with pytest.raises(ValueError, match="already registered"):
        RANKING_METHODS.register(toy_method)
    with pytest.raises(ValueError, match="unknown embedding methods"):
        RankingMethod(name="bad_one", label="Bad", description="", needs=("nope",), rank=_largest_first,
                      explain=lambda d: "")
    with pytest.raises(ValueError, match="lower case"):
        RankingMethod(name="Bad Name", label="Bad", description="", needs=("semb",), rank=_largest_first,
                      explain=lambda d: "")


def test_ranking_method_names_are_listed_in_one_place():
    """No module outside the registries spells out a list of ranking-method names."""
    pattern = re.compile(r"""["'](textemb|semb|taskemb|ensemble)["']\s*,\s*["'](textemb|semb|taskemb|ensemble)["']""")
    allowed = {ROOT / "embeddings" / "registry.py", ROOT / "library" / "methods" / "ensemble.py"}
    offenders = []
    for package in ("app", "library", "worker", "embeddings"):
        for path in (ROOT / package).rglob("*.py"):
            if path not in allowed and pattern.search(path.read_text()):
                offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


def test_nothing_below_app_imports_app():
    offenders = []
    for package in ("worker", "library", "embeddings"):
        for path in (ROOT / package).rglob("*.py"):
            if re.search(r"^\s*(from app[ .]|import app\b)", path.read_text(), re.MULTILINE):
                offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []
