"""The database briefly unavailable: requests fail with 503 (not 500), nothing half-written remains.

PostgreSQL is reached through a TCP proxy the test controls, so the outage is a real refused connection.
"""

from __future__ import annotations

import socket
import threading
import uuid
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from library.settings import Settings

PG = ("127.0.0.1", 5432)


class Proxy:
    """Forwards a local port to PostgreSQL; `cut()` drops every connection and refuses new ones."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.open = True
        self.pairs: list[tuple[socket.socket, socket.socket]] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.open:
                client.close()
                continue
            try:
                upstream = socket.create_connection(PG, timeout=5)
            except OSError:
                client.close()
                continue
            self.pairs.append((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self) -> None:
        self.open = False
        for a, b in self.pairs:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                    s.close()
                except OSError:
                    pass
        self.pairs.clear()

    def restore(self) -> None:
        self.open = True

    def close(self) -> None:
        self.cut()
        self.listener.close()


@pytest.fixture
def pg_schema():
    psycopg = pytest.importorskip("psycopg")
    try:
        conn = psycopg.connect("postgresql://postgres@127.0.0.1:5432/test", autocommit=True, connect_timeout=3)
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"PostgreSQL is unreachable on 127.0.0.1:5432 ({exc})")
    schema = f"taskrank_outage_{uuid.uuid4().hex[:10]}"
    conn.execute(f'CREATE SCHEMA "{schema}"')
    yield schema
    conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
    conn.close()


def test_database_outage_gives_503_and_keeps_nothing_half_written(pg_schema, tmp_path: Path):
    proxy = Proxy()
    url = f"postgresql://postgres@127.0.0.1:{proxy.port}/test?options=-csearch_path%3D{pg_schema}&connect_timeout=2"
    settings = Settings(data_dir=tmp_path / "data", database_url=url, device="cpu")
    rows = {"rows": [{"text": "good", "label": "pos"}, {"text": "bad", "label": "neg"}]}
    try:
        with TestClient(create_app(settings), raise_server_exceptions=False) as client:
            kept = client.post("/datasets", json=rows)
            assert kept.status_code == 201
            proxy.cut()
            assert client.get("/datasets").status_code == 503
            assert client.get(f"/datasets/{kept.json()['id']}").status_code == 503
            failed_upload = client.post("/datasets", json={"rows": [{"text": "new", "label": "a"},
                                                                    {"text": "rows", "label": "b"}]})
            assert failed_upload.status_code == 503
            assert "database is unavailable" in failed_upload.json()["detail"]
            assert client.post("/rankings", json={"dataset_id": kept.json()["id"]}).status_code == 503
            health = client.get("/health")
            assert health.status_code == 503 and health.json()["database"].startswith("unavailable")
            stored = sorted(p.name for p in (settings.data_dir / "datasets").iterdir() if not p.name.startswith("."))
            assert len(stored) == 1  # the refused upload left no file behind
            proxy.restore()
            listed = client.get("/datasets")
            assert listed.status_code == 200
            assert [d["id"] for d in listed.json()] == [kept.json()["id"]]  # what was stored is kept
            assert client.get("/health").json()["database"] == "ok"
    finally:
        proxy.close()
