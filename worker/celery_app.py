"""The one Celery app, configured from Settings. Celery carries job ids; the job table is the record."""

from __future__ import annotations

from celery import Celery
from kombu import Queue

from library.settings import Settings, get_settings
from worker.embedded_broker import broker_url
from worker.job_kinds import EMBED_QUEUE, QUEUES, TASK_NAMES, TRAIN_QUEUE  # noqa: E402,F401 - re-exported


def make_celery(settings: Settings) -> Celery:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    url = broker_url(settings.resolved_broker_url) if settings.embedded_broker else settings.resolved_broker_url
    app = Celery("taskrank", broker=url, include=["worker.tasks"])
    # kombu's SQLAlchemy transport hands its options to create_engine: it takes none of Redis's.
    transport_options: dict[str, object] = (
        {} if settings.embedded_broker else {"visibility_timeout": settings.broker_visibility_timeout})
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_track_started=True,
        task_ignore_result=True,  # results live in the job table, not the result backend
        task_soft_time_limit=settings.job_soft_time_limit,
        task_time_limit=settings.job_time_limit,
        task_default_queue=EMBED_QUEUE,
        task_queues=tuple(Queue(q) for q in QUEUES),
        task_routes={f"taskrank.{q}.*": {"queue": q} for q in QUEUES},
        broker_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        worker_hijack_root_logger=False,
        worker_max_tasks_per_child=200,
        task_serializer="json",
        accept_content=["json"],
    )
    return app


celery_app = make_celery(get_settings())
