"""Every 4xx and 5xx is one shape: RFC 9457 problem details, declared in the OpenAPI document."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from library.settings import Settings

PROBLEM = "application/problem+json"


@pytest.fixture
def client(service_settings: Settings):
    with TestClient(create_app(service_settings), raise_server_exceptions=False) as test_client:
        yield test_client


def problem(response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body = response.json()
    assert body["type"] == "about:blank" and body["status"] == status and body["title"] and body["detail"]
    return body


def test_bad_data_names_file_line_and_column(client):
    body = problem(client.post("/datasets", files={"file": ("bad.csv", b"text,label\ngood,1\nworse,\xff\xfe\n")}), 422)
    assert body["title"] == "Unprocessable Content" and "UTF-8" in body["detail"]
    assert body["file"] == "bad.csv" and body["line"] == 3 and isinstance(body["column"], int)
    missing = problem(client.post("/datasets", files={"file": ("odd.csv", b"review,stars\nfine,1\nbad,0\n")}), 422)
    assert missing["field"] == "text" and "errors" not in missing


def test_schema_violations_list_every_issue(client):
    body = problem(client.post("/rankings", json={"dataset_id": "x", "method": "bogus", "top_k": 0}), 422)
    assert [issue["loc"][-1] for issue in body["errors"]] == ["method", "top_k"]
    assert body["field"] == "method" and "unknown ranking method 'bogus'" in body["detail"]
    assert "and 1 more" in body["detail"]
    assert problem(client.get("/datasets", params={"limit": "many"}), 422)["field"] == "limit"


def test_every_kind_of_error_is_a_problem(client, service_settings):
    assert "no dataset nope" in problem(client.get("/datasets/nope"), 404)["detail"]
    assert problem(client.get("/no/such/path"), 404)["detail"] == "Not Found"
    assert problem(client.put("/datasets"), 405)
    assert problem(client.post("/datasets", content=b"x", headers={"content-type": "text/csv"}), 415)
    big = b"text,label\n" + b"row,1\n" * (service_settings.max_upload_bytes // 6 + 20_000)
    assert "TASKRANK_MAX_UPLOAD_BYTES" in problem(client.post("/datasets", content=big,
                                                                headers={"content-type": "text/csv"}), 413)["detail"]


def test_unhandled_errors_are_a_problem_without_a_traceback(service_settings):
    from app.deps import get_jobs

    app = create_app(service_settings)

    def broken():
        raise RuntimeError("secret internals")

    app.dependency_overrides[get_jobs] = broken
    with TestClient(app, raise_server_exceptions=False) as client:
        body = problem(client.get("/datasets"), 500)
    assert "RuntimeError" in body["detail"] and "secret internals" not in body["detail"]


def test_keys_and_pages(service_settings):
    settings = service_settings.model_copy(update={"api_keys": "k1", "auth_reads": True})
    with TestClient(create_app(settings)) as client:
        unauthorised = client.get("/datasets")
        assert problem(unauthorised, 401)["detail"].startswith("a valid API key is required")
        assert unauthorised.headers["www-authenticate"] == "Bearer"
        page = client.get("/jobs/view", headers={"accept": "text/html"})  # a page renders the same problem
        assert page.status_code == 401 and page.headers["content-type"].startswith("text/html")
        assert "a valid API key is required" in page.text and "Unauthorized" in page.text


def test_the_openapi_document_declares_the_problem_shape(client):
    schema = client.get("/openapi.json").json()
    components = schema["components"]["schemas"]
    assert {"ErrorResponse", "HTTPValidationError"}.isdisjoint(components)
    assert set(components["Problem"]["required"]) == {"title", "status", "detail"}
    errors = [(path, method, code, response) for path, operations in schema["paths"].items()
              for method, operation in operations.items() for code, response in operation["responses"].items()
              if code[0] in "45"]
    assert len(errors) > 20
    for path, method, code, response in errors:
        assert response["content"] == {PROBLEM: {"schema": {"$ref": "#/components/schemas/Problem"}}}, \
            (path, method, code)
    assert "422" in schema["paths"]["/rankings"]["post"]["responses"]
