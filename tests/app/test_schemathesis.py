"""Property-based API tests from /openapi.json: no server errors, responses match the documented schema."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from app.main import create_app
from tests.app.test_e2e import free_port

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def live_url(tmp_path_factory, tiny_model_dir, tiny_library_db):
    import uvicorn

    from library.settings import Settings

    data_dir = tmp_path_factory.mktemp("schemathesis-data")
    (data_dir / "taskrank.db").write_bytes(tiny_library_db.read_bytes())
    app_settings = Settings(data_dir=data_dir, model=str(tiny_model_dir), device="cpu", max_upload_bytes=100_000)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(app_settings), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code in (200, 503):
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    yield url
    server.should_exit = True
    thread.join(timeout=10)


def test_api_conforms_to_its_schema(live_url):
    """Schemathesis' own CLI over the live server: every operation, positive and negative inputs."""
    cli = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    if cli is None:
        pytest.skip("schemathesis is not installed (it is in the dev extra)")
    result = subprocess.run(
        [cli, "run", f"{live_url}/openapi.json", "--checks",
         "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
         "--max-examples", "25", "--seed", "13", "--request-timeout", "30", "--no-color"],
        capture_output=True, text=True, timeout=600)
    report = result.stdout[-6000:] + result.stderr[-2000:]
    assert result.returncode == 0, report
    assert "No issues found" in report or "passed" in report.lower(), report
