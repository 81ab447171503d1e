"""Celery tasks: thin wrappers that hand a job id to `worker.runner`.

The model, the store and the library load lazily, once per worker process, after the fork.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import Any

from celery.signals import worker_process_init, worker_ready, worker_shutdown

from library.jobs import JobStore
from library.service import LibraryService
from library.settings import get_settings
from worker import runner
from worker.celery_app import celery_app
from worker.job_kinds import JOB_KINDS, TASK_NAMES, Handler, JobKind

log = logging.getLogger(__name__)
RETRY = {"autoretry_for": (ConnectionError, TimeoutError, runner.TransientJobError), "retry_backoff": True,
         "retry_backoff_max": 60, "max_retries": 8, "acks_late": True}


@worker_process_init.connect
def _configure_process(**_: object) -> None:
    """After the fork: explicit thread pools (torch and FAISS) and no CUDA touched in the parent."""
    from embeddings.encoders import set_threads

    set_threads(get_settings().torch_threads)
    try:
        import faiss

        faiss.omp_set_num_threads(max(1, get_settings().torch_threads or 1))
    except ImportError:  # pragma: no cover
        pass


@lru_cache(maxsize=1)
def job_store() -> JobStore:
    return JobStore(get_settings().resolved_database_url)


@lru_cache(maxsize=1)
def library_service() -> LibraryService:
    return LibraryService.from_settings(get_settings())


def _run(function: Handler, job_id: str) -> None:
    try:
        function(job_id, job_store(), library_service(), get_settings())
    except Exception as exc:
        if runner.is_transient(exc):
            raise runner.TransientJobError(str(exc)) from exc
        raise


def _register(kind: JobKind) -> Any:
    """One Celery task per job kind: a thin wrapper handing the job id to the kind's handler."""

    def task(job_id: str) -> None:
        _run(kind.handler, job_id)

    task.__name__ = task.__qualname__ = f"{kind.name}_task"
    task.__doc__ = f"The {kind.name} job (queue {kind.queue})."
    return celery_app.task(name=kind.task_name, **RETRY)(task)


TASKS = {name: _register(kind) for name, kind in JOB_KINDS.items()}


def _heartbeat_loop(name: str, queues: str, interval: float = 10.0) -> None:
    import time

    while True:
        try:
            job_store().heartbeat(name, queues)
        except Exception as exc:  # the database may be briefly away; health reports it
            log.warning("heartbeat failed: %s", exc)
        time.sleep(interval)


def sweep_lost_jobs() -> int:
    """Dispatch again the jobs a broker lost (restarted without persistence) or a killed worker held.

    Safe to run in every worker: `start_job` lets only one delivery run a job.
    """
    settings = get_settings()
    lost = job_store().lost_jobs(settings.job_stale_after, settings.job_requeue_after)
    for job in lost:
        log.warning("dispatching lost job %s (%s, was %s)", job.id, job.kind, job.state.value)
        celery_app.send_task(TASK_NAMES[job.kind], args=[job.id], queue=job.queue)
    return len(lost)


def _sweep_loop() -> None:
    import time

    while True:
        time.sleep(get_settings().sweep_interval)
        try:
            sweep_lost_jobs()
        except Exception as exc:  # broker or database away: the next sweep tries again
            log.warning("sweep for lost jobs failed: %s", exc)


@worker_ready.connect
def _start_heartbeat(sender: object = None, **_: object) -> None:
    """Workers announce themselves in the job database (/health counts them without a broadcast)
    and sweep for jobs that lost their message or their worker."""
    import threading

    hostname = getattr(sender, "hostname", "worker")
    queues = ",".join(sorted(q.name for q in celery_app.amqp.queues.consume_from.values())) \
        if celery_app.amqp.queues.consume_from else ""
    threading.Thread(target=_heartbeat_loop, args=(hostname, queues), daemon=True).start()
    threading.Thread(target=_sweep_loop, daemon=True).start()


@worker_shutdown.connect
def _stop_heartbeat(sender: object = None, **_: object) -> None:
    try:
        job_store().forget_worker(getattr(sender, "hostname", "worker"))
    except Exception:  # noqa: BLE001 - shutting down anyway
        pass
