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
