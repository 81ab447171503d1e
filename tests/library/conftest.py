"""Fixtures for the library tests: a store on SQLite and on PostgreSQL, and synthetic embeddings."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest

from embeddings.result import EmbeddingResult
from library.store import LibraryStore
from tests.library.helpers import PG_URL, data_hash


@pytest.fixture(scope="session")
def pg_available() -> str | None:
    """None when PostgreSQL answers, else the reason to skip."""
    try:
        import psycopg

        with psycopg.connect(PG_URL.replace("+psycopg", ""), connect_timeout=3):
            return None
    except Exception as exc:  # any failure means: no server for these tests
        return f"PostgreSQL at {PG_URL} is unreachable ({type(exc).__name__}: {exc})"


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path, pg_available) -> Iterator[str]:
    """A database URL for an empty library: a fresh SQLite file, or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'taskrank.db'}"
        return
    if pg_available is not None:
        pytest.skip(pg_available)
    import psycopg

    schema = f"taskrank_test_{uuid.uuid4().hex[:12]}"
    plain = PG_URL.replace("+psycopg", "")
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield f"{plain}?options=-csearch_path%3D{schema}"  # plain URL: also exercises driver normalisation
    finally:
        with psycopg.connect(plain, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture
def store(store_url: str) -> Iterator[LibraryStore]:
    s = LibraryStore(store_url)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def sqlite_store(tmp_path) -> Iterator[LibraryStore]:
    s = LibraryStore.from_data_dir(tmp_path / "data")
    try:
        yield s
    finally:
        s.close()


AddSource = Callable[..., int]


@pytest.fixture
def add_source(sqlite_store: LibraryStore) -> AddSource:
    """Add a source task with the given embeddings; returns its id."""

    def add(
        name: str, task_type: str = "classification", num_train: int = 1000, **results: EmbeddingResult
    ) -> int:
        task = sqlite_store.add_task(name, task_type, num_train=num_train, data_hash=data_hash(name))
        for result in results.values():
            sqlite_store.add_embedding(task.id, result)
        return task.id

    return add
