"""Where the learned ranker keeps what it learns from: measured transfers, and its fitted versions.

Two tables in the service's database (the same URL as the library and the job store):

* `transfer_results`: one row per finished intermediate-transfer job of the service (a source, then
  the user's target, against the batch's no-transfer baseline on the same seeds), with its regime (the
  encoder's weights hash and the source training regime) and the pair's features as they were when the
  job finished, so a later fit can reuse the row after the target's upload is gone. Rows of another
  regime are kept but a fit does not mix them in.
* `ranker_versions`: every fitted ranker (the scikit-learn models pickled, with the scikit-learn version),
  what it was trained on, its leave-one-target-out figures and whether it is the active one. Versions
  are kept, so `taskrank ranker use VERSION` can roll back.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    DateTime,
    Engine,
    Float,
    Integer,
    LargeBinary,
    String,
    func,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from library.db import JSON_COLUMN, as_utc, make_engine, utc_now


class Base(DeclarativeBase):
    pass


class TransferResultRow(Base):
    __tablename__ = "transfer_results"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(String(32), unique=True)
    batch_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    source: Mapped[str] = mapped_column(String(200))
    target: Mapped[str] = mapped_column(String(200))  # the target dataset's name
    target_hash: Mapped[str] = mapped_column(String(64), index=True)
    regime: Mapped[str] = mapped_column(String(64), index=True)
    metric: Mapped[str | None] = mapped_column(String(32), nullable=True)
    score: Mapped[float] = mapped_column(Float)  # mean over seeds
    baseline_score: Mapped[float] = mapped_column(Float)  # mean over the same seeds
    runs: Mapped[list[dict[str, Any]]] = mapped_column(JSON_COLUMN, default=list)  # seed, score, baseline_score
    features: Mapped[dict[str, Any] | None] = mapped_column(JSON_COLUMN, nullable=True)  # the pair's, no prior
    target_facts: Mapped[dict[str, Any] | None] = mapped_column(JSON_COLUMN, nullable=True)
    info: Mapped[dict[str, Any]] = mapped_column(JSON_COLUMN, default=dict)  # seconds, steps, checkpoint reuse, ...
    owner: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now)


class RankerVersionRow(Base):
    __tablename__ = "ranker_versions"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    active: Mapped[bool] = mapped_column(Boolean, default=False, index=True)
    status: Mapped[str] = mapped_column(String(16))  # active, kept (was active or fitted), rejected
    regime: Mapped[str] = mapped_column(String(64))
    model: Mapped[bytes] = mapped_column(LargeBinary)  # pickled `library.ranker.FittedRanker`
    sklearn_version: Mapped[str] = mapped_column(String(32))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON_COLUMN, default=dict)  # candidate, features
    trained_on: Mapped[dict[str, Any]] = mapped_column(JSON_COLUMN, default=dict)
    validation: Mapped[dict[str, Any]] = mapped_column(JSON_COLUMN, default=dict)
    note: Mapped[str] = mapped_column(String(500), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now)


@dataclass(frozen=True)
class TransferResult:
    id: int
    job_id: str
    batch_id: str | None
    source: str
    target: str
    target_hash: str
    regime: str
    metric: str | None
    score: float
    baseline_score: float
    runs: list[dict[str, Any]]
    features: dict[str, Any] | None
    target_facts: dict[str, Any] | None
    info: dict[str, Any]
    owner: str | None
    created_at: datetime

    @property
    def relative_gain(self) -> float | None:
        """In percent of the baseline, as `library.evaluation.Transfer.gain` (None when the baseline is <= 0)."""
        if self.baseline_score <= 0:
            return None
        return (self.score - self.baseline_score) / self.baseline_score * 100.0


@dataclass(frozen=True)
class RankerVersion:
    id: int
    active: bool
    status: str
    regime: str
    sklearn_version: str
    spec: dict[str, Any]
    trained_on: dict[str, Any]
    validation: dict[str, Any]
    note: str
    created_at: datetime

    def summary(self) -> dict[str, Any]:
        """What `GET /ranker` and `taskrank ranker list` show (no model bytes)."""
        return {"version": self.id, "active": self.active, "status": self.status, "regime": self.regime,
                "fitted_at": self.created_at.isoformat(), "sklearn_version": self.sklearn_version,
                "spec": self.spec, "trained_on": self.trained_on, "validation": self.validation, "note": self.note}


def _result(row: TransferResultRow) -> TransferResult:
    return TransferResult(id=row.id, job_id=row.job_id, batch_id=row.batch_id, source=row.source, target=row.target,
                          target_hash=row.target_hash, regime=row.regime, metric=row.metric, score=row.score,
                          baseline_score=row.baseline_score, runs=list(row.runs or []),
                          features=dict(row.features) if row.features is not None else None,
                          target_facts=dict(row.target_facts) if row.target_facts is not None else None,
                          info=dict(row.info or {}), owner=row.owner, created_at=as_utc(row.created_at))


def _version(row: RankerVersionRow) -> RankerVersion:
    return RankerVersion(id=row.id, active=row.active, status=row.status, regime=row.regime,
                         sklearn_version=row.sklearn_version, spec=dict(row.spec or {}),
                         trained_on=dict(row.trained_on or {}), validation=dict(row.validation or {}),
                         note=row.note, created_at=as_utc(row.created_at))


_BY_ENGINE: dict[int, RankerStore] = {}


class RankerStore:
    """Transfer results and ranker versions; every method is one short transaction."""

    def __init__(self, url: str | None = None, *, engine: Engine | None = None) -> None:
        if engine is None:
            if url is None:
                raise ValueError("a database URL or an engine is needed")
            engine = make_engine(url)
            self._owns_engine = True
        else:
            self._owns_engine = False
        self.engine = engine
        Base.metadata.create_all(self.engine)
        self._session = sessionmaker(self.engine, expire_on_commit=False)

    @classmethod
    def for_engine(cls, engine: Engine) -> RankerStore:
        """One store per engine and process (its tables are created once, not on every request)."""
        key = id(engine)
        found = _BY_ENGINE.get(key)
        if found is None or found.engine is not engine:
            found = _BY_ENGINE[key] = cls(engine=engine)
        return found

    def close(self) -> None:
        if self._owns_engine:
            self.engine.dispose()

    def __enter__(self) -> RankerStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._session.begin() as session:
            yield session

    # transfer results ------------------------------------------------------------------------------
    def add_result(self, **fields: Any) -> TransferResult | None:
        """Insert one job's result; None when that job was recorded already (a redelivered job)."""
        try:
            with self.session() as s:
                row = TransferResultRow(**fields)
                s.add(row)
                s.flush()
                return _result(row)
        except IntegrityError:
            return None

    def recorded_jobs(self, job_ids: list[str]) -> set[str]:
        if not job_ids:
            return set()
        with self.session() as s:
            return set(s.scalars(select(TransferResultRow.job_id).where(TransferResultRow.job_id.in_(job_ids))))

    def results(self, regime: str | None = None, after_id: int = 0) -> list[TransferResult]:
        with self.session() as s:
            query = select(TransferResultRow).where(TransferResultRow.id > after_id).order_by(TransferResultRow.id)
            if regime is not None:
                query = query.where(TransferResultRow.regime == regime)
            return [_result(r) for r in s.scalars(query)]

    def count_results(self, regime: str | None = None, after_id: int = 0) -> int:
        with self.session() as s:
            query = select(func.count()).select_from(TransferResultRow).where(TransferResultRow.id > after_id)
            if regime is not None:
                query = query.where(TransferResultRow.regime == regime)
            return int(s.scalar(query) or 0)

    # ranker versions -------------------------------------------------------------------------------
    def add_version(self, *, model: bytes, activate: bool, **fields: Any) -> RankerVersion:
        with self.session() as s:
            if activate:
                s.execute(update(RankerVersionRow).where(RankerVersionRow.active.is_(True))
                          .values(active=False, status="kept"))
            status = fields.pop("status", "rejected")
            row = RankerVersionRow(model=model, active=activate, status="active" if activate else status, **fields)
            s.add(row)
            s.flush()
            return _version(row)

    def versions(self) -> list[RankerVersion]:
        with self.session() as s:
            return [_version(r) for r in s.scalars(select(RankerVersionRow).order_by(RankerVersionRow.id))]

    def get_version(self, version: int) -> RankerVersion | None:
        with self.session() as s:
            row = s.get(RankerVersionRow, version)
            return _version(row) if row else None

    def active_version(self) -> RankerVersion | None:
        with self.session() as s:
            row = s.scalars(select(RankerVersionRow).where(RankerVersionRow.active.is_(True))).first()
            return _version(row) if row else None

    def active_id(self) -> int | None:
        """The active version's number only (the ranking cache key reads it on every request)."""
        with self.engine.connect() as conn:
            return conn.execute(select(RankerVersionRow.id).where(RankerVersionRow.active.is_(True))).scalar()

    def active_is_default(self) -> bool:
        """Whether the active version validated well enough to be the default method (its spec says, at fit)."""
        with self.engine.connect() as conn:
            spec = conn.execute(select(RankerVersionRow.spec).where(RankerVersionRow.active.is_(True))).scalar()
        return bool((spec or {}).get("default"))

    def model_bytes(self, version: int) -> bytes | None:
        with self.session() as s:
            return s.scalar(select(RankerVersionRow.model).where(RankerVersionRow.id == version))

    def activate(self, version: int) -> RankerVersion:
        """Make `version` the active one (a rollback, or a manual choice); the others are kept."""
        with self.session() as s:
            row = s.get(RankerVersionRow, version, with_for_update=True)
            if row is None:
                raise LookupError(f"no ranker version {version}")
            s.execute(update(RankerVersionRow).where(RankerVersionRow.active.is_(True), RankerVersionRow.id != version)
                      .values(active=False, status="kept"))
            row.active, row.status = True, "active"
            s.flush()
            return _version(row)
