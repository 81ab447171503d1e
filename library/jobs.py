"""The service's record of truth: uploaded datasets, jobs and their progress, stored rankings.

Celery only carries job ids; every state change, progress tick, result and error is written
here, so a restarted broker or worker never loses what happened.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, cast

from sqlalchemy import (
    Boolean,
    CursorResult,
    DateTime,
    Engine,
    Float,
    Integer,
    String,
    Text,
    bindparam,
    func,
    select,
    update,
)
from sqlalchemy.engine import Row
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from library.db import JSON_COLUMN, as_utc, make_engine, normalize_database_url, utc_now


def new_id() -> str:
    return uuid.uuid4().hex


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})


class Base(DeclarativeBase):
    pass


class DatasetRow(Base):
    __tablename__ = "datasets"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200))
    filename: Mapped[str] = mapped_column(String(300), default="")  # shown, never used as a path
    file_sha256: Mapped[str] = mapped_column(String(64), index=True)
    file_ext: Mapped[str] = mapped_column(String(16))
    content_hash: Mapped[str] = mapped_column(String(64), index=True)
    task_type: Mapped[str] = mapped_column(String(32))
    rows: Mapped[int] = mapped_column(Integer)
    labels: Mapped[dict[str, Any]] = mapped_column(JSON_COLUMN, default=dict)
    load_options: Mapped[dict[str, Any]] = mapped_column(JSON_COLUMN, default=dict)
    description: Mapped[dict[str, Any]] = mapped_column(JSON_COLUMN, default=dict)
    size_bytes: Mapped[int] = mapped_column(Integer)
    owner: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now)


class JobRow(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    kind: Mapped[str] = mapped_column(String(32), index=True)
    state: Mapped[str] = mapped_column(String(16), index=True, default=JobState.QUEUED.value)
    stage: Mapped[str] = mapped_column(String(100), default="queued")
    done: Mapped[int] = mapped_column(Integer, default=0)
    total: Mapped[int] = mapped_column(Integer, default=0)
    eta_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    params: Mapped[dict[str, Any]] = mapped_column(JSON_COLUMN, default=dict)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON_COLUMN, nullable=True)
    dataset_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    queue: Mapped[str] = mapped_column(String(32), default="embed")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    owner: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now, index=True)
    dispatched_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class RankingRow(Base):
    __tablename__ = "rankings"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    request_key: Mapped[str] = mapped_column(String(64), unique=True)
    dataset_id: Mapped[str] = mapped_column(String(32), index=True)
    job_id: Mapped[str] = mapped_column(String(32))
    method: Mapped[str] = mapped_column(String(16))
    top_k: Mapped[int] = mapped_column(Integer)
    all_class: Mapped[bool] = mapped_column(Boolean)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON_COLUMN, nullable=True)
    owner: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now)


class WorkerRow(Base):
    __tablename__ = "workers"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    queues: Mapped[str] = mapped_column(String(200), default="")
    last_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now)


class TransferBatchRow(Base):
    """A transfer batch: one target, its sources and seeds; its jobs (baseline + one per source) by id."""

    __tablename__ = "transfer_batches"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    target_dataset_id: Mapped[str] = mapped_column(String(32), index=True)
    dev_dataset_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    method: Mapped[str] = mapped_column(String(32))
    sources: Mapped[list[dict[str, Any]]] = mapped_column(JSON_COLUMN, default=list)
    seeds: Mapped[list[int]] = mapped_column(JSON_COLUMN, default=list)
    options: Mapped[dict[str, Any]] = mapped_column(JSON_COLUMN, default=dict)
    # {"baseline": id, "sources": {key: id}}; a multi-source method's batch also {"combined": id}
    job_ids: Mapped[dict[str, Any]] = mapped_column(JSON_COLUMN, default=dict)
    ranking_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    owner: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now, index=True)


@dataclass(frozen=True)
class Job:
    id: str
    kind: str
    state: JobState
    stage: str
    done: int
    total: int
    eta_seconds: float | None
    error: str | None
    params: dict[str, Any]
    result: dict[str, Any] | None
    dataset_id: str | None
    queue: str
    attempts: int
    cancel_requested: bool
    owner: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @property
    def progress(self) -> float:
        if self.state == JobState.SUCCEEDED:
            return 1.0
        return min(1.0, self.done / self.total) if self.total else 0.0

    @property
    def duration_seconds(self) -> float | None:
        if self.started_at is None:
            return None
        end = self.finished_at or utc_now()
        return max(0.0, (as_utc(end) - as_utc(self.started_at)).total_seconds())


@dataclass(frozen=True)
class StoredDataset:
    id: str
    name: str
    filename: str
    file_sha256: str
    file_ext: str
    content_hash: str
    task_type: str
    rows: int
    labels: dict[str, Any]
    load_options: dict[str, Any]
    description: dict[str, Any]
    size_bytes: int
    owner: str | None
    created_at: datetime


@dataclass(frozen=True)
class StoredRanking:
    id: str
    request_key: str
    dataset_id: str
    job_id: str
    method: str
    top_k: int
    all_class: bool
    result: dict[str, Any] | None
    owner: str | None
    created_at: datetime


@dataclass(frozen=True)
class StoredTransferBatch:
    id: str
    target_dataset_id: str
    dev_dataset_id: str | None
    method: str
    sources: list[dict[str, Any]]
    seeds: list[int]
    options: dict[str, Any]
    job_ids: dict[str, Any]
    ranking_id: str | None
    owner: str | None
    created_at: datetime

    @property
    def all_job_ids(self) -> list[str]:
        """The baseline's job first, then the sources' in the batch's order, then a multi-source job."""
        by_source = self.job_ids.get("sources") or {}
        ids = [self.job_ids.get("baseline")] + [by_source.get(s["key"]) for s in self.sources]
        ids.append(self.job_ids.get("combined"))
        return [i for i in ids if i]




def _job(row: JobRow) -> Job:
    return Job(id=row.id, kind=row.kind, state=JobState(row.state), stage=row.stage, done=row.done,
               total=row.total, eta_seconds=row.eta_seconds, error=row.error, params=dict(row.params or {}),
               result=row.result, dataset_id=row.dataset_id, queue=row.queue, attempts=row.attempts,
               cancel_requested=row.cancel_requested, owner=row.owner, created_at=as_utc(row.created_at),
               started_at=as_utc(row.started_at) if row.started_at else None,
               finished_at=as_utc(row.finished_at) if row.finished_at else None)


def _dataset(row: DatasetRow) -> StoredDataset:
    return StoredDataset(id=row.id, name=row.name, filename=row.filename, file_sha256=row.file_sha256,
                         file_ext=row.file_ext, content_hash=row.content_hash, task_type=row.task_type,
                         rows=row.rows, labels=dict(row.labels or {}), load_options=dict(row.load_options or {}),
                         description=dict(row.description or {}), size_bytes=row.size_bytes, owner=row.owner,
                         created_at=as_utc(row.created_at))


def _ranking(row: RankingRow) -> StoredRanking:
    return StoredRanking(id=row.id, request_key=row.request_key, dataset_id=row.dataset_id, job_id=row.job_id,
                         method=row.method, top_k=row.top_k, all_class=row.all_class, result=row.result,
                         owner=row.owner, created_at=as_utc(row.created_at))


def _transfer_batch(row: TransferBatchRow) -> StoredTransferBatch:
    return StoredTransferBatch(id=row.id, target_dataset_id=row.target_dataset_id,
                               dev_dataset_id=row.dev_dataset_id, method=row.method, sources=list(row.sources or []), seeds=list(row.seeds or []),
                               options=dict(row.options or {}), job_ids=dict(row.job_ids or {}),
                               ranking_id=row.ranking_id, owner=row.owner, created_at=as_utc(row.created_at))


# The hot reads (a job polled, a ranking answered from the store), prebuilt: building and cache-keying
# a select, and the ORM's identity-map load, cost several times the query itself.
_JOB_BY_ID = select(JobRow.__table__).where(JobRow.__table__.c.id == bindparam("key"))
_DATASET_BY_ID = select(DatasetRow.__table__).where(DatasetRow.__table__.c.id == bindparam("key"))
_RANKING_BY_KEY = select(RankingRow.__table__).where(RankingRow.__table__.c.request_key == bindparam("key"))


class JobStore:
    """Datasets, jobs and rankings in SQLite or PostgreSQL; every method is one short transaction."""

    def __init__(self, url: str, *, engine: Engine | None = None) -> None:
        self.url = normalize_database_url(url)
        # SQLite: a pool as wide as the API's thread pool, so busy moments reuse connections
        self.engine = engine or make_engine(self.url, pool_size=20)
        Base.metadata.create_all(self.engine)
        self._session = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def in_process(self) -> bool:
        """SQLite: every read is a call into this process, no network round trip."""
        return self.url.startswith("sqlite")

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._session.begin() as session:
            yield session

    def _read_one(self, statement: Any, key: str) -> Row[Any] | None:
        """One row by a prebuilt statement on a plain connection (no ORM session): see `_JOB_BY_ID`."""
        with self.engine.connect() as conn:
            return conn.execute(statement, {"key": key}).first()

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")

    # datasets -----------------------------------------------------------------------------
    def add_dataset(self, **fields: Any) -> StoredDataset:
        with self.session() as s:
            row = DatasetRow(**fields)
            s.add(row)
            s.flush()
            return _dataset(row)

    def find_dataset(self, *, file_sha256: str, content_hash: str, name: str, task_type: str,
                     owner: str | None) -> StoredDataset | None:
        """The record an identical upload (same file, content, name, task type and owner) already made."""
        with self.session() as s:
            query = select(DatasetRow).where(
                DatasetRow.file_sha256 == file_sha256, DatasetRow.content_hash == content_hash,
                DatasetRow.name == name, DatasetRow.task_type == task_type,
                DatasetRow.owner.is_(None) if owner is None else DatasetRow.owner == owner,
            ).order_by(DatasetRow.created_at).limit(1)
            row = s.scalars(query).first()
            return _dataset(row) if row else None

    def get_dataset(self, dataset_id: str) -> StoredDataset | None:
        row = self._read_one(_DATASET_BY_ID, dataset_id)
        return _dataset(row) if row else None  # type: ignore[arg-type]  # a Row has the same attributes

    def list_datasets(self, owner: str | None = None, limit: int = 100) -> list[StoredDataset]:
        with self.session() as s:
            query = select(DatasetRow).order_by(DatasetRow.created_at.desc()).limit(limit)
            if owner is not None:
                query = query.where(DatasetRow.owner == owner)
            return [_dataset(r) for r in s.scalars(query)]

    def delete_dataset(self, dataset_id: str) -> StoredDataset | None:
        with self.session() as s:
            row = s.get(DatasetRow, dataset_id)
            if row is None:
                return None
            found = _dataset(row)
            s.delete(row)
            return found

    def datasets_with_file(self, file_sha256: str) -> int:
        with self.session() as s:
            return int(s.scalar(select(func.count()).where(DatasetRow.file_sha256 == file_sha256)) or 0)

    # jobs ---------------------------------------------------------------------------------
    def create_job(self, kind: str, *, params: dict[str, Any], dataset_id: str | None = None,
                   queue: str = "embed", owner: str | None = None, total: int = 0) -> Job:
        with self.session() as s:
            row = JobRow(kind=kind, params=params, dataset_id=dataset_id, queue=queue, owner=owner, total=total)
            s.add(row)
            s.flush()
            return _job(row)

    def get_job(self, job_id: str) -> Job | None:
        row = self._read_one(_JOB_BY_ID, job_id)
        return _job(row) if row else None  # type: ignore[arg-type]

    def list_jobs(self, *, state: str | None = None, owner: str | None = None, kind: str | None = None,
                  limit: int = 50) -> list[Job]:
        with self.session() as s:
            query = select(JobRow).order_by(JobRow.created_at.desc()).limit(limit)
            if state:
                query = query.where(JobRow.state == state)
            if kind:
                query = query.where(JobRow.kind == kind)
            if owner is not None:
                query = query.where(JobRow.owner == owner)
            return [_job(r) for r in s.scalars(query)]

    def unfinished_jobs(self) -> list[Job]:
        with self.session() as s:
            query = select(JobRow).where(JobRow.state.in_([JobState.QUEUED.value, JobState.RUNNING.value]))
            return [_job(r) for r in s.scalars(query.order_by(JobRow.created_at))]

    def count_by_state(self) -> dict[str, int]:
        with self.session() as s:
            rows = s.execute(select(JobRow.state, func.count()).group_by(JobRow.state)).all()
            counts = {state.value: 0 for state in JobState}
            counts.update({state: int(n) for state, n in rows})
            return counts

    def lost_jobs(self, stale_after: float, requeue_after: float) -> list[Job]:
        """Running jobs whose worker went silent, and queued jobs whose message may be gone."""
        now = utc_now()
        with self.session() as s:
            rows = s.scalars(select(JobRow).where(
                JobRow.state.in_([JobState.QUEUED.value, JobState.RUNNING.value]))).all()
            lost = []
            for row in rows:
                if row.state == JobState.RUNNING.value:
                    silent = ((now - as_utc(row.updated_at)).total_seconds() > stale_after
                              and (now - as_utc(row.dispatched_at)).total_seconds() > stale_after)
                else:
                    silent = (now - as_utc(row.dispatched_at)).total_seconds() > requeue_after
                if silent:
                    row.dispatched_at = now
                    lost.append(_job(row))
            return lost

    def queue_depths(self) -> dict[str, int]:
        with self.session() as s:
            rows = s.execute(select(JobRow.queue, func.count()).where(JobRow.state == JobState.QUEUED.value)
                             .group_by(JobRow.queue)).all()
        depths = {"embed": 0, "train": 0}
        depths.update({queue: int(n) for queue, n in rows})
        return depths

    def finished_durations(self, limit: int = 1000) -> list[tuple[str, float]]:
        with self.session() as s:
            rows = s.execute(select(JobRow.kind, JobRow.started_at, JobRow.finished_at)
                             .where(JobRow.state == JobState.SUCCEEDED.value, JobRow.started_at.is_not(None))
                             .order_by(JobRow.finished_at.desc()).limit(limit)).all()
        # started_at IS NOT NULL is part of the query
        return [(kind, (as_utc(end) - as_utc(cast(datetime, start))).total_seconds()) for kind, start, end in rows if end]

    def start_job(self, job_id: str, stale_after: float = 90.0) -> Job | None:
        """Mark running and return the job; None when there is nothing for this delivery to do.

        Nothing to do: the job is gone or finished (a redelivered message), or another worker is
        running it and reported within `stale_after` seconds (a duplicate dispatch). A running job
        silent for longer lost its worker (killed mid-job) and is taken over.
        """
        with self.session() as s:
            row = s.get(JobRow, job_id, with_for_update=True)
            if row is None or row.state in {st.value for st in TERMINAL}:
                return None
            if row.state == JobState.RUNNING.value and (utc_now() - as_utc(row.updated_at)).total_seconds() < stale_after:
                return None
            if row.cancel_requested:
                row.state, row.stage, row.finished_at = JobState.CANCELLED.value, "cancelled", utc_now()
                return None
            row.state, row.stage = JobState.RUNNING.value, "starting"
            row.started_at = row.started_at or utc_now()
            row.attempts += 1
            row.updated_at = utc_now()
            return _job(row)

    def progress(self, job_id: str, done: int, total: int, stage: str | None = None) -> bool:
        """Record progress and ETA; returns False when cancellation was requested (the worker stops).

        A job whose cancellation was requested keeps the progress it had then: a report that arrives
        later (even a last one at 100%) is of work that will be thrown away.
        """
        with self.session() as s:
            row = s.get(JobRow, job_id)
            if row is None or row.cancel_requested:
                return False
            now = utc_now()
            row.done, row.total, row.updated_at = int(done), int(total), now
            if stage:
                row.stage = stage
            if row.started_at and 0 < done < total:
                elapsed = (now - as_utc(row.started_at)).total_seconds()
                row.eta_seconds = elapsed / done * (total - done)
            elif done >= total:
                row.eta_seconds = 0.0
            return True

    def succeed_job(self, job_id: str, result: dict[str, Any]) -> bool:
        return self._finish(job_id, JobState.SUCCEEDED, result=result)

    def fail_job(self, job_id: str, error: str) -> bool:
        return self._finish(job_id, JobState.FAILED, error=error)

    def mark_cancelled(self, job_id: str) -> bool:
        return self._finish(job_id, JobState.CANCELLED, error="cancelled")

    def _finish(self, job_id: str, state: JobState, *, result: dict[str, Any] | None = None,
                error: str | None = None) -> bool:
        with self.session() as s:
            values: dict[str, Any] = {"state": state.value, "stage": state.value, "finished_at": utc_now(),
                                      "updated_at": utc_now(), "error": error, "eta_seconds": 0.0}
            if result is not None:
                values["result"] = result
            changed = s.execute(update(JobRow).where(JobRow.id == job_id,
                                                     JobRow.state.not_in([t.value for t in TERMINAL]))
                                .values(**values))
            return bool(cast(CursorResult[Any], changed).rowcount)  # an UPDATE returns a CursorResult

    def set_job_params(self, job_id: str, params: dict[str, Any]) -> None:
        with self.session() as s:
            s.execute(update(JobRow).where(JobRow.id == job_id).values(params=params))

    def request_cancel(self, job_id: str) -> Job | None:
        """Queued jobs are cancelled at once; running ones stop at their next progress report."""
        with self.session() as s:
            row = s.get(JobRow, job_id, with_for_update=True)
            if row is None:
                return None
            if row.state not in {t.value for t in TERMINAL}:
                row.cancel_requested = True
                if row.state == JobState.QUEUED.value:
                    row.state, row.stage, row.finished_at = JobState.CANCELLED.value, "cancelled", utc_now()
                row.updated_at = utc_now()
            return _job(row)

    # workers ------------------------------------------------------------------------------
    def heartbeat(self, name: str, queues: str) -> None:
        with self.session() as s:
            row = s.get(WorkerRow, name)
            if row is None:
                s.add(WorkerRow(name=name, queues=queues, last_seen=utc_now()))
            else:
                row.last_seen, row.queues = utc_now(), queues

    def live_workers(self, within_seconds: float = 30.0) -> list[tuple[str, str]]:
        with self.session() as s:
            rows = s.execute(select(WorkerRow.name, WorkerRow.queues, WorkerRow.last_seen)).all()
        now = utc_now()
        return [(name, queues) for name, queues, seen in rows
                if (now - as_utc(seen)).total_seconds() <= within_seconds]

    def forget_worker(self, name: str) -> None:
        with self.session() as s:
            row = s.get(WorkerRow, name)
            if row is not None:
                s.delete(row)

    # rankings -----------------------------------------------------------------------------
    def find_ranking(self, request_key: str) -> StoredRanking | None:
        with self.session() as s:
            row = s.scalar(select(RankingRow).where(RankingRow.request_key == request_key))
            return _ranking(row) if row else None

    def find_ranking_with_job(self, request_key: str) -> tuple[StoredRanking | None, Job | None]:
        """The ranking stored under `request_key` and its job, on one connection (the cached-answer path)."""
        with self.engine.connect() as conn:
            row = conn.execute(_RANKING_BY_KEY, {"key": request_key}).first()
            if row is None:
                return None, None
            job = conn.execute(_JOB_BY_ID, {"key": row.job_id}).first()
        return _ranking(row), _job(job) if job else None  # type: ignore[arg-type]

    def get_ranking(self, ranking_id: str) -> StoredRanking | None:
        with self.session() as s:
            row = s.get(RankingRow, ranking_id)
            return _ranking(row) if row else None

    def add_ranking(self, **fields: Any) -> tuple[StoredRanking, bool]:
        """Insert, or return the existing ranking with the same request key (created=False)."""
        try:
            with self.session() as s:
                row = RankingRow(**fields)
                s.add(row)
                s.flush()
                return _ranking(row), True
        except IntegrityError:
            existing = self.find_ranking(fields["request_key"])
            assert existing is not None
            return existing, False

    def forget_ranking(self, ranking_id: str) -> None:
        with self.session() as s:
            row = s.get(RankingRow, ranking_id)
            if row is not None:
                s.delete(row)

    def set_ranking_result(self, ranking_id: str, result: dict[str, Any]) -> None:
        with self.session() as s:
            s.execute(update(RankingRow).where(RankingRow.id == ranking_id).values(result=result))


    # transfer batches ---------------------------------------------------------------------
    def create_transfer_batch(self, *, target_dataset_id: str, dev_dataset_id: str | None, method: str,
                              sources: list[dict[str, Any]], seeds: list[int], options: dict[str, Any],
                              job_params: list[dict[str, Any]], kind: str = "transfer", queue: str = "train",
                              ranking_id: str | None = None, owner: str | None = None
                              ) -> tuple[StoredTransferBatch, list[Job]]:
        """The batch and its jobs in one transaction; every job's params get the batch id.

        `job_params`: one dict per job, with `role` ("baseline" or "source") and `source` (the source's key,
        as in `sources`, or None for the baseline); or `role` "combined": one job over all the sources
        together (a multi-source method).
        """
        batch_id = new_id()
        with self.session() as s:
            rows = [JobRow(kind=kind, params={**params, "batch_id": batch_id}, dataset_id=target_dataset_id,
                           queue=queue, owner=owner) for params in job_params]
            s.add_all(rows)
            s.flush()
            job_ids: dict[str, Any] = {"baseline": None, "sources": {}}
            for row in rows:
                if row.params.get("role") == "baseline":
                    job_ids["baseline"] = row.id
                elif row.params.get("role") == "combined":
                    job_ids["combined"] = row.id
                else:
                    job_ids["sources"][row.params["source"]] = row.id
            batch = TransferBatchRow(id=batch_id, target_dataset_id=target_dataset_id,
                                     dev_dataset_id=dev_dataset_id, method=method, sources=sources, seeds=seeds, options=options, job_ids=job_ids,
                                     ranking_id=ranking_id, owner=owner)
            s.add(batch)
            s.flush()
            return _transfer_batch(batch), [_job(r) for r in rows]

    def get_transfer_batch(self, batch_id: str) -> StoredTransferBatch | None:
        with self.session() as s:
            row = s.get(TransferBatchRow, batch_id)
            return _transfer_batch(row) if row else None

    def list_transfer_batches(self, owner: str | None = None, limit: int = 50) -> list[StoredTransferBatch]:
        with self.session() as s:
            query = select(TransferBatchRow).order_by(TransferBatchRow.created_at.desc()).limit(limit)
            if owner is not None:
                query = query.where(TransferBatchRow.owner == owner)
            return [_transfer_batch(r) for r in s.scalars(query)]

    def transfer_batch_jobs(self, batch: StoredTransferBatch) -> dict[str, Job]:
        """The batch's jobs by id, in one query."""
        ids = batch.all_job_ids
        if not ids:
            return {}
        with self.session() as s:
            return {r.id: _job(r) for r in s.scalars(select(JobRow).where(JobRow.id.in_(ids)))}
