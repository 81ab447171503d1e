"""The notebook client against the real app in-process (FastAPI's TestClient is an httpx.Client)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from app.client import TaskrankClient
from app.main import create_app
from library.settings import Settings


@pytest.fixture
def client(service_settings: Settings):
    with TestClient(create_app(service_settings)) as http:
        taskrank = TaskrankClient()
        taskrank.http.close()
        taskrank.http = http
        yield taskrank


def test_a_dataframe_gets_a_name_that_says_what_it_is_and_uploads_once(client):
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame({"text": ["great film", "awful film", "fine film"], "label": ["pos", "neg", "pos"]})
    first = client.upload(frame)
    again = client.upload(frame.copy())
    assert first["name"].startswith("dataframe-3rows-") and len(first["name"]) == len("dataframe-3rows-") + 8
    assert again["id"] == first["id"] and len(client.datasets()) == 1
    other = client.upload(frame.iloc[:2])
    assert other["name"].startswith("dataframe-2rows-") and other["id"] != first["id"]
    assert client.upload(frame, name="films")["name"] == "films"


def test_errors_raise_taskrank_error_with_the_problem_fields(client):
    from app.client import TaskrankError

    with pytest.raises(TaskrankError) as bad:
        client.upload([{"text": "only", "label": "one"}, {"text": "label", "label": "one"}])
    error = bad.value
    assert error.status == 422 and error.title == "Unprocessable Content" and "only one label" in error.detail
    assert error.type == "about:blank" and error.problem["status"] == 422 and str(error).startswith("HTTP 422: ")
    with pytest.raises(TaskrankError) as missing:
        client.request_ranking("no-such-dataset")
    assert missing.value.status == 404 and missing.value.detail == "no dataset no-such-dataset"
    with pytest.raises(TaskrankError) as invalid:
        client.request_ranking("x", top_k=0)
    assert invalid.value.field == "top_k" and [e["loc"][-1] for e in invalid.value.errors] == ["top_k"]


def test_a_missing_file_is_reported_as_a_missing_file(client, tmp_path):
    for path in ("reviews.csv", "data/reviews", str(tmp_path / "gone.jsonl")):
        with pytest.raises(FileNotFoundError, match="does not exist"):
            client.rank(path, progress=False)
    from app.client import TaskrankError

    with pytest.raises(TaskrankError) as unknown_id:  # no suffix, no separator: a dataset id
        client.rank("0123abcd", progress=False)
    assert unknown_id.value.status == 404 and "no dataset 0123abcd" in unknown_id.value.detail
    assert client.datasets() == []


def test_an_unknown_method_is_refused_before_anything_is_uploaded(client):
    rows = [{"text": "great", "label": "pos"}, {"text": "awful", "label": "neg"}]
    with pytest.raises(ValueError, match="unknown ranking method 'bogus'.*ensemble"):
        client.rank(rows, method="bogus", progress=False)
    assert client.datasets() == []
    submitted = client.request_ranking(client.upload(rows)["id"], method="textemb")
    assert submitted["method"] == "textemb"
