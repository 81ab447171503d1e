"""What a job does, as plain functions over the job store and the library (Celery-free, testable).

Every job is idempotent: it starts by asking the job table whether it is still to be done, writes
its output under keys derived from content hashes, and marks success last. A redelivered message
(a worker killed mid-job, a broker restart) finds the finished record and stops.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.settings import Settings
from embeddings.data import Dataset, DatasetError, LoadLimits, load_dataset
from embeddings.result import EmbeddingResult
from library.build import BuildOptions, add_source, check_encoder, embed_target, library_options, methods_for
from library.errors import LibraryError
from library.jobs import JobStore, StoredDataset
from library.service import LibraryService

log = logging.getLogger(__name__)


class TransientJobError(Exception):
    """Database or broker unavailable: Celery retries the task with backoff."""


class JobCancelled(Exception):
    """Raised from the progress callback when the job's cancellation was requested."""


@dataclass
class JobProgress:
    """`on_progress(done, total)` into the job record, at most every `interval` seconds."""

    store: JobStore
    job_id: str
    stage: str = "running"
    interval: float = 0.5
    _last: float = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - self._last < self.interval:
            return
        self._last = now
        if not self.store.progress(self.job_id, done, total, self.stage):
            raise JobCancelled(self.job_id)


def dataset_path(settings: Settings, record: StoredDataset) -> Path:
    """Content-addressed: the file's sha256 names it; the client's filename is never a path."""
    return settings.data_dir / "datasets" / f"{record.file_sha256}.{record.file_ext}"


def load_stored_dataset(settings: Settings, record: StoredDataset) -> Dataset:
    limits = LoadLimits(max_rows=settings.max_rows, max_text_chars=settings.max_text_chars)
    options = record.load_options
    dataset = load_dataset(dataset_path(settings, record), task_type=record.task_type,
                           column_map=options.get("column_map"), limits=limits, name=record.name)
    return dataset


def _embedding_cache(settings: Settings, dataset: Dataset, model_hash: str, method: str,
                     options: BuildOptions) -> Path:
    key = hashlib.sha256(json.dumps([dataset.content_hash, model_hash, method, options.options_hash]).encode())
    return settings.data_dir / "embeddings" / f"{key.hexdigest()[:32]}.npz"


def target_embeddings(settings: Settings, service: LibraryService, dataset: Dataset, method: str,
                      on_progress: JobProgress) -> dict[str, EmbeddingResult]:
    """The target's embeddings with the library's options, computed once per (data, model, method)."""
    options = library_options(service.store)
    if options is None:
        raise LibraryError("the library is empty: build or import one first")
    encoder = service.encoder
    check_encoder(service.store, encoder)
    options = options.with_token_budget(encoder.token_budget(settings.max_tokens_per_batch))
    found: dict[str, EmbeddingResult] = {}
    missing: list[str] = []
    for part in methods_for(method):
        path = _embedding_cache(settings, dataset, encoder.weights_hash, part, options)
        if path.is_file() and path.with_suffix(".json").is_file():
            found[part] = EmbeddingResult.load(path)
        else:
            missing.append(part)
    if missing:
        on_progress.stage = f"embedding ({', '.join(missing)})"
        computed = embed_target(dataset, encoder, missing, options, on_progress)
        for part, result in computed.items():
            result.save(_embedding_cache(settings, dataset, encoder.weights_hash, part, options))
            found[part] = result
    return {part: found[part] for part in methods_for(method)}


def run_rank(job_id: str, store: JobStore, service: LibraryService, settings: Settings) -> None:
    job = store.start_job(job_id, settings.job_stale_after)
    if job is None:
        return  # finished, cancelled or deleted: a redelivered message stops here
    ranking = store.get_ranking(job.params["ranking_id"])
    if ranking is not None and ranking.result is not None:
        store.succeed_job(job_id, {"ranking_id": ranking.id})
        return
    progress = JobProgress(store, job_id, stage="loading dataset")
    with _outcome(store, job_id):
        record = store.get_dataset(job.dataset_id or "")
        if record is None:
            raise LibraryError(f"dataset {job.dataset_id} was deleted")
        dataset = load_stored_dataset(settings, record)
        targets = target_embeddings(settings, service, dataset, job.params["method"], progress)
        progress.stage = "ranking"
        result = service.library.rank(targets, job.params["method"], top_k=job.params["top_k"],
                                      all_class=job.params["all_class"], exclude_hash=dataset.content_hash)
        payload = result.to_dict()
        payload["dataset_id"] = record.id
        if ranking is not None:
            store.set_ranking_result(ranking.id, payload)
        store.succeed_job(job_id, {"ranking_id": ranking.id if ranking else None})


def run_add_source(job_id: str, store: JobStore, service: LibraryService, settings: Settings) -> None:
    job = store.start_job(job_id, settings.job_stale_after)
    if job is None:
        return
    progress = JobProgress(store, job_id, stage="embedding source")
    with _outcome(store, job_id):
        record = store.get_dataset(job.dataset_id or "")
        if record is None:
            raise LibraryError(f"dataset {job.dataset_id} was deleted")
        name = job.params["name"]
        existing = service.store.get_task(name)
        if existing is not None and existing.data_hash == record.content_hash:
            store.succeed_job(job_id, {"task_id": existing.id, "name": existing.name})  # redelivered
            return
        dataset = load_stored_dataset(settings, record)
        options = library_options(service.store)
        if options is None:
            raise LibraryError("the library is empty: build or import one first")
        encoder = service.encoder
        options = options.with_token_budget(encoder.token_budget(settings.max_tokens_per_batch))
        task, report = add_source(service.store, dataset, encoder, options, name=name,
                                  description=job.params.get("description", ""),
                                  provenance={"source": f"upload {record.id} ({record.filename})"},
                                  on_progress=progress)
        store.succeed_job(job_id, {"task_id": task.id, "name": task.name, "seconds": report.seconds})


class _outcome:
    """Bad data and library errors fail the job with their message; cancellation marks it cancelled.

    Anything else propagates (after the job is marked failed) so Celery records the failure too;
    transient infrastructure errors propagate untouched so the task is retried.
    """

    def __init__(self, store: JobStore, job_id: str) -> None:
        self.store, self.job_id = store, job_id

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, _tb: Any) -> bool:
        if exc is None:
            return False
        if isinstance(exc, JobCancelled):
            self.store.mark_cancelled(self.job_id)
            return True
        if isinstance(exc, DatasetError | LibraryError | ValueError):
            self.store.fail_job(self.job_id, str(exc))
            return True
        if is_transient(exc):
            return False
        log.exception("job %s failed", self.job_id)
        self.store.fail_job(self.job_id, f"internal error: {type(exc).__name__}: {exc}")
        return False


def is_transient(exc: BaseException) -> bool:
    """Database or broker unavailable: worth a retry with backoff."""
    from sqlalchemy.exc import DBAPIError, OperationalError

    if isinstance(exc, OperationalError):
        return True
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, ConnectionError | TimeoutError)
