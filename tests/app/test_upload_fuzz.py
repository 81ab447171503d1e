"""Hostile uploads: every one gets a 4xx with a clear message, never a 5xx, and nothing is stored."""

from __future__ import annotations

import random
import socket
import threading
import time

import httpx
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from tests.app.test_e2e import free_port


def _rows(n: int) -> bytes:
    return b"text,label\n" + b"".join(b"r%d,%d\n" % (i, i % 2) for i in range(n))


CASES: dict[str, tuple[str, bytes, str]] = {
    "empty": ("empty.csv", b"", "empty"),
    "only header": ("header.csv", b"text,label\n", "no data rows"),
    "binary": ("blob.csv", bytes(range(256)) * 8, "binary"),
    "bad utf-8 jsonl": ("bad.jsonl", b'{"text": "ok", "label": "a"}\n{"text": "\xc3\x28", "label": "b"}\n', "UTF-8"),
    "wrong columns": ("cols.csv", b"foo,bar\n1,2\n3,4\n", "text"),
    "one label": ("one.csv", b"text,label\na,x\nb,x\nc,x\n", "only one label"),
    "huge single line": ("long.csv", b"text,label\n" + b"a" * 150_000 + b",x\nb,y\n", "more than the limit"),
    "too many rows": ("many.csv", _rows(3_000), "rows"),
    "nested json bomb": ("bomb.json", b"[" * 100_000 + b"]" * 100_000, "nest"),
    "json not rows": ("scalar.json", b"42", "json"),
    "tags mismatch": ("tags.jsonl", b'{"tokens": ["a", "b"], "tags": ["X"]}\n', "tags"),
    "nul bytes": ("data.bin", b"\x00\x01\x02 not a dataset", "binary"),
    "unknown format": ("data.bin", b"just some words here\nand more words\n", "format"),
}


@pytest.fixture
def client(service_settings):
    settings = service_settings.model_copy(update={"max_rows": 2_000, "max_text_chars": 100_000,
                                                   "max_upload_bytes": 400_000})
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        test_client.settings = settings
        yield test_client


def stored(settings) -> list[str]:
    folder = settings.data_dir / "datasets"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_upload_is_a_clear_4xx(client, case):
    filename, body, phrase = CASES[case]
    response = client.post("/datasets", files={"file": (filename, body)})
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:300])
    message = response.json()["detail"]
    assert phrase.lower() in message.lower(), message
    assert stored(client.settings) == []
    assert client.get("/datasets").json() == []


def test_random_bytes_never_5xx(client):
    rng = random.Random(13)
    for i in range(60):
        size = rng.choice([1, 10, 100, 1000, 20_000])
        body = bytes(rng.getrandbits(8) for _ in range(size))
        name = rng.choice(["x.csv", "x.tsv", "x.jsonl", "x.json", "x.conll", "x", "../../x.csv"])
        response = client.post("/datasets", files={"file": (name, body)})
        assert response.status_code < 500, (i, name, response.text[:200])
        if response.status_code == 201:  # random bytes that parse: fine, but then it is stored properly
            client.delete(f"/datasets/{response.json()['id']}")
    assert stored(client.settings) == []


def test_malformed_multipart_and_json_bodies(client):
    assert client.post("/datasets", content=b"--x\r\nnot multipart",
                       headers={"content-type": "multipart/form-data; boundary=x"}).status_code in (400, 422)
    assert client.post("/datasets", content=b"{not json", headers={"content-type": "application/json"}
                       ).status_code in (400, 422)
    no_file = client.post("/datasets", data={"name": "x"}, files={"other": ("a.csv", b"text,label\na,b\n")})
    assert no_file.status_code == 422 and "file" in no_file.json()["detail"]
    bad_map = client.post("/datasets", files={"file": ("a.csv", b"t,l\na,b\nc,d\n")}, data={"column_map": "{oops"})
    assert bad_map.status_code == 422 and bad_map.json()["field"] == "column_map"
    deep_rows = {"rows": [{"text": "a", "label": "x", "extra": [[[[[]]]]]}, {"text": "b", "label": "y"}]}
    assert client.post("/datasets", json=deep_rows).status_code in (201, 422)
    assert stored(client.settings) in ([], [p for p in stored(client.settings) if p.endswith(".jsonl")])


@pytest.fixture
def live_server(service_settings):
    import uvicorn

    settings = service_settings.model_copy(update={"max_upload_bytes": 1_000_000})
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(200):
        try:
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
            break
        except httpx.HTTPError:
            time.sleep(0.05)
    yield port, settings
    server.should_exit = True
    thread.join(timeout=10)


def _read_status(sock: socket.socket) -> int:
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return int(data.split(b" ")[1])


def test_oversize_declared_length_is_refused_before_the_body(live_server):
    port, settings = live_server
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"POST /datasets HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                     b"Content-Length: 50000000000\r\n\r\n")
        assert _read_status(sock) == 413  # answered without a byte of the body sent
    assert stored(settings) == []


def test_oversize_chunked_body_is_cut_off_while_streaming(live_server):
    port, settings = live_server
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"POST /datasets HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        head = b'--b\r\nContent-Disposition: form-data; name="file"; filename="big.csv"\r\n\r\ntext,label\n'
        sock.sendall(b"%x\r\n%s\r\n" % (len(head), head))
        chunk = b"x" * 65536
        status = None
        try:
            for _ in range(2000):  # up to 128 MB offered; the cap is 1 MB
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
                sock.setblocking(False)
                try:
                    peek = sock.recv(4096, socket.MSG_PEEK)
                    if peek:
                        break
                except BlockingIOError:
                    pass
                finally:
                    sock.setblocking(True)
        except (BrokenPipeError, ConnectionResetError):
            pass
        sock.settimeout(10)
        status = _read_status(sock)
    assert status == 413
    assert sent < 20_000_000  # refused long before the client was done
    assert stored(settings) == []
