"""What the three stores (library, jobs, ranker) share about their database: one engine recipe for
SQLite and PostgreSQL, the JSON column type, and timestamps that are always UTC-aware."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Engine, create_engine, event
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import make_url

JSON_COLUMN = JSON().with_variant(JSONB(), "postgresql")


def utc_now() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """SQLite returns naive datetimes for timezone-aware columns; every stored time is UTC."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def normalize_database_url(url: str) -> str:
    """Force the psycopg 3 driver for plain PostgreSQL URLs (SQLAlchemy would pick psycopg2)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    """SQLite ignores foreign keys (and so ON DELETE CASCADE) unless asked, per connection; WAL lets the
    API read while a worker process writes."""
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def make_engine(url: str, *, echo: bool = False, pool_size: int | None = None) -> Engine:
    """An engine for a (normalised) database URL.

    SQLite: a 30 s lock timeout, the pragmas above on every connection, no ping per checkout (a local
    file never goes stale) and, with `pool_size`, a pool that wide (plus as much overflow again), so busy
    moments reuse connections. PostgreSQL: connections pinged before use (the server may drop them).
    """
    url = normalize_database_url(url)
    if not url.startswith("sqlite"):
        return create_engine(url, echo=echo, pool_pre_ping=True)
    options: dict[str, Any] = {"connect_args": {"timeout": 30, "check_same_thread": False}}
    if pool_size and make_url(url).database not in (None, "", ":memory:"):  # in-memory: a singleton pool
        options.update(pool_size=pool_size, max_overflow=int(pool_size * 1.5))
    engine = create_engine(url, echo=echo, **options)
    event.listen(engine, "connect", sqlite_pragmas)
    return engine
