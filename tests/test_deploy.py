"""The Docker deployment files: the compose file validates and wires api, worker, redis and postgres."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def compose_command() -> list[str]:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    pytest.skip("neither `docker compose` nor `docker-compose` is installed (.ci/run installs docker-compose)")


def compose_config(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(compose_command() + ["-f", str(REPO / "docker-compose.yml"), "config"],
                          capture_output=True, text=True, env={**os.environ, **env}, cwd=REPO)


def test_compose_file_validates_with_required_variables():
    result = compose_config({"POSTGRES_PASSWORD": "secret"})
    assert result.returncode == 0, result.stderr
    config = result.stdout
    for service in ("api:", "worker-embed:", "worker-train:", "redis:", "postgres:"):
        assert service in config
    assert config.count("healthcheck:") >= 5
    assert "redis://redis:6379/0" in config and "postgresql://taskrank:secret@postgres:5432/taskrank" in config


def test_compose_refuses_a_missing_database_password():
    env = {k: v for k, v in os.environ.items() if k != "POSTGRES_PASSWORD"}
    result = subprocess.run(compose_command() + ["-f", str(REPO / "docker-compose.yml"), "config"],
                            capture_output=True, text=True, env=env, cwd=REPO)
    assert result.returncode != 0 and "POSTGRES_PASSWORD" in (result.stderr + result.stdout)


def test_dockerfile_runs_the_service_with_a_healthcheck():
    text = (REPO / "Dockerfile").read_text()
    assert "HEALTHCHECK" in text and '"taskrank", "serve"' in text and "USER taskrank" in text


def test_each_queue_has_its_own_worker_service():
    """A ranking (`embed`) never waits behind a fine-tuning (`train`): no worker consumes both queues."""
    import yaml

    services = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    queues = [service["command"][service["command"].index("--queues") + 1]
              for service in services.values() if "worker" in (service.get("command") or [])]
    assert sorted(queues) == ["embed", "train"]
