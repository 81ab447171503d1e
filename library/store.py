"""Relational store of source tasks and their embeddings (SQLite by default, PostgreSQL for a service).

The database is the source of truth; FAISS indexes (`library.index`) are caches rebuilt from it.
Every write bumps a revision counter in `library_meta` inside the same transaction, so
`version()` tells readers (and index sidecars) whether anything changed.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import (
    DateTime,
    Engine,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    delete,
    func,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from embeddings.registry import EMBEDDING_METHODS as EMBEDDING_METHOD_SPECS
from embeddings.result import EmbeddingResult
from embeddings.task_types import TASK_TYPE_NAMES
from library.db import JSON_COLUMN, make_engine, normalize_database_url
from library.errors import LibraryError
from library.paths import DataPaths

TASK_TYPES = TASK_TYPE_NAMES
EMBEDDING_METHODS = tuple(EMBEDDING_METHOD_SPECS)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class SourceTaskRow(Base):
    __tablename__ = "source_tasks"
    # AUTOINCREMENT on SQLite: ids are never reused, so a stale index can never confuse two tasks.
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    task_type: Mapped[str] = mapped_column(String(32))
    description: Mapped[str] = mapped_column(Text, default="")
    num_train: Mapped[int] = mapped_column(Integer)
    num_dev: Mapped[int | None] = mapped_column(Integer, nullable=True)
    data_hash: Mapped[str] = mapped_column(String(64), index=True)
    provenance: Mapped[dict[str, Any]] = mapped_column(JSON_COLUMN, default=dict)
    library_version: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_utcnow)


class TaskEmbeddingRow(Base):
    __tablename__ = "task_embeddings"
    __table_args__ = (
        UniqueConstraint("source_task_id", "model_name", "method", "component"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    source_task_id: Mapped[int] = mapped_column(ForeignKey("source_tasks.id", ondelete="CASCADE"), index=True)
    model_name: Mapped[str] = mapped_column(String(300))
    model_hash: Mapped[str] = mapped_column(String(128))
    method: Mapped[str] = mapped_column(String(16))
    component: Mapped[str] = mapped_column(String(200))
    dim: Mapped[int] = mapped_column(Integer)
    vector: Mapped[bytes] = mapped_column(LargeBinary)
    options: Mapped[dict[str, Any]] = mapped_column(JSON_COLUMN, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_utcnow)


class SourceMapRow(Base):
    """A per-source linear map between embedding spaces (`kind` "esm": the base encoder's pooled
    embeddings to those of the encoder fine-tuned on the source; Schulte et al. 2024). fp16 weights."""

    __tablename__ = "source_maps"
    __table_args__ = (
        UniqueConstraint("source_task_id", "kind", "model_hash"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    source_task_id: Mapped[int] = mapped_column(ForeignKey("source_tasks.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    model_name: Mapped[str] = mapped_column(String(300))
    model_hash: Mapped[str] = mapped_column(String(128))
    checkpoint: Mapped[str] = mapped_column(String(200))  # the fine-tuned source encoder's cache file name
    dim_in: Mapped[int] = mapped_column(Integer)
    dim_out: Mapped[int] = mapped_column(Integer)
    weight: Mapped[bytes] = mapped_column(LargeBinary)  # fp16 (dim_out, dim_in), little-endian
    bias: Mapped[bytes] = mapped_column(LargeBinary)  # fp16 (dim_out,)
    info: Mapped[dict[str, Any]] = mapped_column(JSON_COLUMN, default=dict)  # r2_heldout, rows, ridge, ...
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_utcnow)


class LibraryMetaRow(Base):
    """Single row: a random library id (guards against a recreated database) and a revision counter."""

    __tablename__ = "library_meta"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    library_id: Mapped[str] = mapped_column(String(32))
    revision: Mapped[int] = mapped_column(Integer, default=0)


class LibraryBuildRow(Base):
    """Append-only log of builds and imports (the build manifest); not ranking content, so no revision bump."""

    __tablename__ = "library_builds"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    info: Mapped[dict[str, Any]] = mapped_column(JSON_COLUMN, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_utcnow)


@dataclass(frozen=True)
class StoredEmbedding:
    """One stored component vector of one task."""

    model_name: str
    model_hash: str
    method: str
    component: str
    vector: np.ndarray  # float32
    options: dict[str, Any]


@dataclass(frozen=True)
class StoredMap:
    """One source's map as stored: fp16 weights widened to float32."""

    task_id: int
    task_name: str
    kind: str
    model_name: str
    model_hash: str
    checkpoint: str
    weight: np.ndarray  # float32 (dim_out, dim_in)
    bias: np.ndarray  # float32 (dim_out,)
    info: dict[str, Any]


@dataclass(frozen=True)
class SourceTask:
    id: int
    name: str
    task_type: str
    description: str
    num_train: int
    num_dev: int | None
    data_hash: str
    provenance: dict[str, Any]
    library_version: str
    created_at: datetime


@dataclass(frozen=True)
class EmbeddingKey:
    model_name: str
    model_hash: str
    method: str
    component: str


@dataclass(frozen=True)
class EmbeddingSet:
    """All vectors of one (model, method, component), read in one query so ids, rows and vectors agree."""

    model_name: str
    model_hash: str
    method: str
    component: str
    ids: np.ndarray  # int64 source task ids, ascending
    embedding_ids: np.ndarray  # int64 task_embeddings row ids, aligned with ids
    names: list[str]
    matrix: np.ndarray  # float32 (n, dim), unnormalised
    library_version: str = ""

    @property
    def dimension(self) -> int:
        return int(self.matrix.shape[1])


def default_database_url(data_dir: str | Path) -> str:
    return f"sqlite:///{DataPaths(Path(data_dir)).database.resolve()}"


def _task(row: SourceTaskRow) -> SourceTask:
    created = row.created_at
    if created.tzinfo is None:  # SQLite drops the offset; values are written in UTC
        created = created.replace(tzinfo=UTC)
    return SourceTask(
        id=row.id,
        name=row.name,
        task_type=row.task_type,
        description=row.description,
        num_train=row.num_train,
        num_dev=row.num_dev,
        data_hash=row.data_hash,
        provenance=dict(row.provenance or {}),
        library_version=row.library_version,
        created_at=created,
    )


def _check_vector(component: str, vec: np.ndarray) -> np.ndarray:
    arr = np.asarray(vec, dtype=np.float32)
    if arr.ndim != 1 or arr.size == 0:
        raise LibraryError(f"component {component!r}: expected a non-empty 1-D vector, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise LibraryError(f"component {component!r}: vector has NaN or infinite values")
    if not np.any(arr):
        raise LibraryError(f"component {component!r}: all-zero vector has no direction (cosine undefined)")
    return arr


class LibraryStore:
    """Source tasks and their embeddings in SQLite or PostgreSQL; public methods return plain dataclasses."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = normalize_database_url(url)
        self.engine: Engine = make_engine(self.url, echo=echo)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        Base.metadata.create_all(self.engine)
        self._ensure_meta()

    @classmethod
    def from_data_dir(cls, data_dir: str | Path) -> LibraryStore:
        """The default store: `<data_dir>/taskrank.db` (SQLite)."""
        Path(data_dir).mkdir(parents=True, exist_ok=True)
        return cls(default_database_url(data_dir))

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> LibraryStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- version -------------------------------------------------------------------------------

    def _ensure_meta(self) -> None:
        with self._sessions() as session:
            if session.get(LibraryMetaRow, 1) is not None:
                return
            session.add(LibraryMetaRow(id=1, library_id=uuid.uuid4().hex, revision=0))
            try:
                session.commit()
            except IntegrityError:  # another process initialised it first
                session.rollback()

    def version(self) -> str:
        """Changes on every add/remove; includes a random library id so a recreated database never matches."""
        with self._sessions() as session:
            revision, library_id = session.execute(
                select(LibraryMetaRow.revision, LibraryMetaRow.library_id).where(LibraryMetaRow.id == 1)
            ).one()
        return _format_version(revision, library_id)

    @contextmanager
    def _write(self) -> Iterator[tuple[Session, str]]:
        """A write transaction that first bumps the revision.

        Bumping first takes the row lock (PostgreSQL) or the write lock (SQLite) up front, so
        concurrent writers serialise and the checks done inside the transaction are race-free.
        """
        with self._sessions() as session, session.begin():
            session.execute(
                update(LibraryMetaRow)
                .where(LibraryMetaRow.id == 1)
                .values(revision=LibraryMetaRow.revision + 1)
            )
            revision, library_id = session.execute(
                select(LibraryMetaRow.revision, LibraryMetaRow.library_id).where(LibraryMetaRow.id == 1)
            ).one()
            yield session, _format_version(revision, library_id)

    # -- tasks ---------------------------------------------------------------------------------

    def add_task(
        self,
        name: str,
        task_type: str,
        *,
        num_train: int,
        data_hash: str,
        description: str = "",
        num_dev: int | None = None,
        provenance: dict[str, Any] | None = None,
    ) -> SourceTask:
        """Register a source task; `library_version` records the library version it was added in."""
        name = name.strip()
        if not name:
            raise LibraryError("source task name must not be empty")
        if task_type not in TASK_TYPES:
            raise LibraryError(f"unknown task_type {task_type!r}; expected one of {', '.join(TASK_TYPES)}")
        data_hash = data_hash.lower()
        if not _SHA256.match(data_hash):
            raise LibraryError(f"data_hash must be a sha256 hex digest, got {data_hash!r}")
        if num_train < 0 or (num_dev is not None and num_dev < 0):
            raise LibraryError("num_train / num_dev must be non-negative")
        try:
            with self._write() as (session, version):
                if session.scalar(select(SourceTaskRow.id).where(SourceTaskRow.name == name)) is not None:
                    raise LibraryError(f"source task {name!r} already exists")
                row = SourceTaskRow(
                    name=name,
                    task_type=task_type,
                    description=description,
                    num_train=num_train,
                    num_dev=num_dev,
                    data_hash=data_hash,
                    provenance=dict(provenance or {}),
                    library_version=version,
                )
                session.add(row)
                session.flush()
                task = _task(row)
        except IntegrityError as exc:
            raise LibraryError(f"source task {name!r} already exists") from exc
        return task

    def get_task(self, name: str) -> SourceTask | None:
        with self._sessions() as session:
            row = session.scalar(select(SourceTaskRow).where(SourceTaskRow.name == name))
            return _task(row) if row is not None else None

    def list_tasks(self) -> list[SourceTask]:
        """All tasks, ordered by name."""
        with self._sessions() as session:
            return [_task(r) for r in session.scalars(select(SourceTaskRow).order_by(SourceTaskRow.name))]

    def remove_task(self, name_or_id: str | int) -> SourceTask:
        """Delete a task; its embeddings go with it (ON DELETE CASCADE)."""
        with self._write() as (session, _):
            col = SourceTaskRow.id if isinstance(name_or_id, int) else SourceTaskRow.name
            row = session.scalar(select(SourceTaskRow).where(col == name_or_id))
            if row is None:
                raise LibraryError(f"no source task {name_or_id!r}")
            task = _task(row)
            session.expunge(row)
            session.execute(delete(SourceTaskRow).where(SourceTaskRow.id == task.id))
        return task

    # -- embeddings ----------------------------------------------------------------------------

    def add_embedding(self, task_id: int, result: EmbeddingResult) -> int:
        """Store every component of `result` for the task in one transaction; returns the count.

        Re-adding the same (model, method) replaces that task's previous components. A library key
        (model_name, method, component) must keep one model hash and one dimension, since its
        vectors share one index and are compared with each other.
        """
        if result.method not in EMBEDDING_METHODS:
            raise LibraryError(f"unknown embedding method {result.method!r}")
        if not result.vectors:
            raise LibraryError("embedding result has no vectors")
        vectors = {c: _check_vector(c, v) for c, v in result.vectors.items()}
        with self._write() as (session, _):
            if session.get(SourceTaskRow, task_id) is None:
                raise LibraryError(f"no source task with id {task_id}")
            existing = session.execute(
                select(TaskEmbeddingRow.component, TaskEmbeddingRow.model_hash, TaskEmbeddingRow.dim)
                .where(
                    TaskEmbeddingRow.model_name == result.model_name,
                    TaskEmbeddingRow.method == result.method,
                    TaskEmbeddingRow.source_task_id != task_id,
                    TaskEmbeddingRow.component.in_(list(vectors)),
                )
                .distinct()
            ).all()
            for component, model_hash, dim in existing:
                if model_hash != result.model_hash:
                    raise LibraryError(
                        f"library has {result.model_name!r} embeddings with hash {model_hash}, this one has "
                        f"{result.model_hash}: re-embed with the library's model or rebuild the library"
                    )
                if dim != vectors[component].shape[0]:
                    raise LibraryError(
                        f"component {component!r}: library vectors have dimension {dim}, got {vectors[component].shape[0]}"
                    )
            session.execute(
                delete(TaskEmbeddingRow).where(
                    TaskEmbeddingRow.source_task_id == task_id,
                    TaskEmbeddingRow.model_name == result.model_name,
                    TaskEmbeddingRow.method == result.method,
                )
            )
            options = dict(result.options)
            session.add_all(
                TaskEmbeddingRow(
                    source_task_id=task_id,
                    model_name=result.model_name,
                    model_hash=result.model_hash,
                    method=result.method,
                    component=component,
                    dim=int(vec.shape[0]),
                    vector=vec.astype("<f4").tobytes(),
                    options=options,
                )
                for component, vec in vectors.items()
            )
        return len(vectors)

    def keys(self) -> list[EmbeddingKey]:
        """Distinct (model_name, model_hash, method, component) present in the library."""
        with self._sessions() as session:
            rows = session.execute(
                select(
                    TaskEmbeddingRow.model_name,
                    TaskEmbeddingRow.model_hash,
                    TaskEmbeddingRow.method,
                    TaskEmbeddingRow.component,
                )
                .distinct()
                .order_by(
                    TaskEmbeddingRow.model_name,
                    TaskEmbeddingRow.method,
                    TaskEmbeddingRow.component,
                    TaskEmbeddingRow.model_hash,
                )
            ).all()
        return [EmbeddingKey(*r) for r in rows]

    def embedding_ids(self, model_name: str, method: str, component: str) -> dict[int, int]:
        """task id -> task_embeddings row id: a cheap fingerprint of a key's content (rows are never reused)."""
        with self._sessions() as session:
            rows = session.execute(
                select(TaskEmbeddingRow.source_task_id, TaskEmbeddingRow.id).where(
                    TaskEmbeddingRow.model_name == model_name,
                    TaskEmbeddingRow.method == method,
                    TaskEmbeddingRow.component == component,
                )
            ).all()
        return {int(t): int(e) for t, e in rows}

    def embedding_set(self, model_name: str, method: str, component: str) -> EmbeddingSet:
        """Every vector of one key in one SELECT (consistent even without a snapshot transaction)."""
        version = self.version()  # read first: a concurrent write can only make this look older (safe)
        with self._sessions() as session:
            rows = session.execute(
                select(
                    TaskEmbeddingRow.source_task_id,
                    TaskEmbeddingRow.id,
                    SourceTaskRow.name,
                    TaskEmbeddingRow.model_hash,
                    TaskEmbeddingRow.dim,
                    TaskEmbeddingRow.vector,
                )
                .join(SourceTaskRow, SourceTaskRow.id == TaskEmbeddingRow.source_task_id)
                .where(
                    TaskEmbeddingRow.model_name == model_name,
                    TaskEmbeddingRow.method == method,
                    TaskEmbeddingRow.component == component,
                )
                .order_by(TaskEmbeddingRow.source_task_id)
            ).all()
        hashes = {r.model_hash for r in rows}
        dims = {r.dim for r in rows}
        if len(hashes) > 1 or len(dims) > 1:
            raise LibraryError(
                f"library key ({model_name}, {method}, {component}) mixes model hashes {sorted(hashes)} "
                f"or dimensions {sorted(dims)}: re-embed the affected tasks"
            )
        dim = dims.pop() if dims else 0
        matrix = np.zeros((len(rows), dim), dtype=np.float32)
        for i, r in enumerate(rows):
            matrix[i] = np.frombuffer(r.vector, dtype="<f4")
        return EmbeddingSet(
            model_name=model_name,
            model_hash=hashes.pop() if hashes else "",
            method=method,
            component=component,
            ids=np.array([r.source_task_id for r in rows], dtype=np.int64),
            embedding_ids=np.array([r.id for r in rows], dtype=np.int64),
            names=[r.name for r in rows],
            matrix=matrix,
            library_version=version,
        )

    def vectors(self, model_name: str, method: str, component: str) -> tuple[np.ndarray, np.ndarray]:
        """(task ids as int64, float32 matrix of unnormalised vectors), ordered by task id."""
        es = self.embedding_set(model_name, method, component)
        return es.ids, es.matrix

    def task_embeddings(self, task_id: int) -> list[StoredEmbedding]:
        """Every stored vector of one task, ordered by (model, method, row id), i.e. insertion order."""
        with self._sessions() as session:
            rows = session.scalars(
                select(TaskEmbeddingRow)
                .where(TaskEmbeddingRow.source_task_id == task_id)
                .order_by(TaskEmbeddingRow.model_name, TaskEmbeddingRow.method, TaskEmbeddingRow.id)
            ).all()
            return [
                StoredEmbedding(
                    model_name=r.model_name,
                    model_hash=r.model_hash,
                    method=r.method,
                    component=r.component,
                    vector=np.frombuffer(r.vector, dtype="<f4").astype(np.float32),
                    options=dict(r.options or {}),
                )
                for r in rows
            ]

    # -- per-source maps (ESMs) ----------------------------------------------------------------

    def put_source_map(self, task_id: int, kind: str, model_name: str, model_hash: str, checkpoint: str,
                       weight: np.ndarray, bias: np.ndarray, info: dict[str, Any]) -> None:
        """Store (or replace) a source's map; a ranking that uses maps sees a new library version."""
        w = np.asarray(weight, dtype=np.float32)
        b = np.asarray(bias, dtype=np.float32)
        if w.ndim != 2 or b.shape != (w.shape[0],) or not (np.all(np.isfinite(w)) and np.all(np.isfinite(b))):
            raise LibraryError(f"a {kind} map needs a finite (d_out, d_in) weight and (d_out,) bias")
        with self._write() as (session, _):
            if session.get(SourceTaskRow, task_id) is None:
                raise LibraryError(f"no source task with id {task_id}")
            session.execute(delete(SourceMapRow).where(SourceMapRow.source_task_id == task_id,
                                                       SourceMapRow.kind == kind,
                                                       SourceMapRow.model_hash == model_hash))
            session.add(SourceMapRow(source_task_id=task_id, kind=kind, model_name=model_name,
                                     model_hash=model_hash, checkpoint=checkpoint, dim_in=int(w.shape[1]),
                                     dim_out=int(w.shape[0]), weight=w.astype("<f2").tobytes(),
                                     bias=b.astype("<f2").tobytes(), info=dict(info)))

    def source_maps(self, kind: str, model_hash: str | None = None) -> list[StoredMap]:
        """Every source's map of `kind` (for one model when given), ordered by task id."""
        with self._sessions() as session:
            query = (select(SourceMapRow, SourceTaskRow.name)
                     .join(SourceTaskRow, SourceTaskRow.id == SourceMapRow.source_task_id)
                     .where(SourceMapRow.kind == kind).order_by(SourceMapRow.source_task_id))
            if model_hash is not None:
                query = query.where(SourceMapRow.model_hash == model_hash)
            return [StoredMap(task_id=row.source_task_id, task_name=name, kind=row.kind, model_name=row.model_name,
                              model_hash=row.model_hash, checkpoint=row.checkpoint,
                              weight=np.frombuffer(row.weight, dtype="<f2").astype(np.float32)
                              .reshape(row.dim_out, row.dim_in),
                              bias=np.frombuffer(row.bias, dtype="<f2").astype(np.float32),
                              info=dict(row.info or {}))
                    for row, name in session.execute(query).all()]

    def has_maps(self, kind: str) -> bool:
        """Whether any source has a map of `kind` (one indexed lookup: no weights are read)."""
        with self._sessions() as session:
            return session.execute(select(SourceMapRow.id).where(SourceMapRow.kind == kind).limit(1)).first() is not None

    # -- build log -----------------------------------------------------------------------------

    def record_build(self, info: dict[str, Any]) -> int:
        """Append a build (or import) record: the build manifest. Returns its id."""
        with self._sessions() as session, session.begin():
            row = LibraryBuildRow(info=dict(info))
            session.add(row)
            session.flush()
            return int(row.id)

    def builds(self) -> list[dict[str, Any]]:
        """Build records, oldest first, each with its `id` and `recorded_at` (ISO 8601, UTC)."""
        with self._sessions() as session:
            rows = session.scalars(select(LibraryBuildRow).order_by(LibraryBuildRow.id)).all()
            out = []
            for r in rows:
                created = r.created_at if r.created_at.tzinfo else r.created_at.replace(tzinfo=UTC)
                out.append({"id": r.id, "recorded_at": created.isoformat(), **dict(r.info or {})})
            return out

    def count_embeddings(self) -> int:
        with self._sessions() as session:
            return int(session.scalar(select(func.count()).select_from(TaskEmbeddingRow)) or 0)


def _format_version(revision: int, library_id: str) -> str:
    return f"r{revision}-{library_id[:8]}"
