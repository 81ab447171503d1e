"""The FastAPI app: builds shared resources in the lifespan, mounts one router per resource."""

from __future__ import annotations

import gc
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from sqlalchemy.exc import DBAPIError, OperationalError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import deps, problems
from app.problems import PROBLEM_MEDIA_TYPE, problem_body, problem_response
from app.routes import datasets, health, jobs, library, pages, rankings, transfer_pages, transfers
from embeddings import __version__
from library.errors import LibraryError
from library.jobs import JobStore
from library.service import LibraryService
from library.settings import Settings, get_settings

log = logging.getLogger(__name__)


class ServiceResources(deps.Services):
    """Services plus the Celery client used to enqueue jobs (by task name: no worker code imported)."""

    def __init__(self, settings: Settings) -> None:
        from worker.celery_app import make_celery

        settings.data_dir.mkdir(parents=True, exist_ok=True)
        super().__init__(settings=settings, jobs=JobStore(settings.resolved_database_url),
                         library=LibraryService.from_settings(settings))
        self.celery = make_celery(settings)

    def enqueue(self, kind: str, job_id: str) -> None:
        from worker.job_kinds import JOB_KINDS

        job = self.jobs.get_job(job_id)
        queue = job.queue if job else JOB_KINDS[kind].queue
        try:
            self.celery.send_task(JOB_KINDS[kind].task_name, args=[job_id], queue=queue, retry=True,
                                  retry_policy={"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5})
        except Exception as exc:
            self.jobs.fail_job(job_id, f"broker unavailable: {type(exc).__name__}")
            raise BrokerUnavailable(str(exc)) from exc

    def broker_status(self) -> str:
        try:
            with self.celery.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1, timeout=2)
            return "ok"
        except Exception as exc:  # noqa: BLE001 - reported by /health
            return f"unavailable: {type(exc).__name__}"

    def close(self) -> None:
        self.jobs.close()
        self.library.close()


class BrokerUnavailable(Exception):
    pass


class BodySizeLimit:
    """Reject bodies over the cap while they stream in, before they are all read (413)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        slack = 1 << 16  # multipart framing around a file right at the cap
        if declared is not None and declared.isdigit() and int(declared) > self.limit + slack:
            await _too_large(send, self.limit)
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit + slack:
                    raise _TooLarge()
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await _too_large(send, self.limit)


class _TooLarge(Exception):
    pass


async def _too_large(send: Send, limit: int) -> None:
    body = json.dumps(problem_body(413, f"request body is larger than the {limit} byte limit "
                                        "(TASKRANK_MAX_UPLOAD_BYTES)")).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", PROBLEM_MEDIA_TYPE.encode()), (b"connection", b"close"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        resources = ServiceResources(settings)
        app.state.services = resources
        # The process holds ~500k long-lived objects after start-up (torch, transformers, the library):
        # a full collection walks them all, 130-250 ms during which no request is answered, which was
        # the whole p99 tail under load (bench/api_load.py). Frozen, they are never scanned again.
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            resources.close()

    from app.schemas import Problem

    common = {400: {"model": Problem, "description": "Malformed request body"},
              503: {"model": Problem, "description": "Database or job queue briefly unavailable"}}
    if settings.api_key_set:
        common[401] = {"model": Problem, "description": "Missing or invalid API key"}
    # /docs and /redoc load Swagger UI and ReDoc from the fastapi-offline package, never from a CDN
    app = FastAPIOffline(title="taskrank", version=__version__, lifespan=lifespan, responses=common,
                         static_url="/docs-static", favicon_url="/static/favicon.svg",
                         description="Rank source tasks for your NLP dataset (TextEmb, SEmb, TaskEmb) and run transfers.")
    from app.routes import (
        library_transfers,  # GET /library/transfers: the shipped transfer matrix
        ranker,  # GET /ranker: the learned ranker
    )

    for router in (pages.router, transfer_pages.router, datasets.router, rankings.router, transfers.router,
                   jobs.router, library.router, library_transfers.router, ranker.router, health.router):
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=Path(__file__).parent / "static"), name="static")
    app.add_middleware(BodySizeLimit, limit=settings.max_upload_bytes)

    problems.install(app)  # every 4xx and 5xx as RFC 9457 problem details, declared in the OpenAPI schema

    @app.exception_handler(OperationalError)
    async def database_unavailable(request: Request, exc: Exception) -> Response:
        log.warning("database unavailable: %s", exc)
        return problem_response(request, 503, "the database is unavailable; try again shortly",
                                headers={"Retry-After": "5"})

    @app.exception_handler(DBAPIError)
    async def database_error(request: Request, exc: DBAPIError) -> Response:
        if exc.connection_invalidated:
            return await database_unavailable(request, exc)
        raise exc

    @app.exception_handler(BrokerUnavailable)
    async def broker_unavailable(request: Request, exc: Exception) -> Response:
        return problem_response(request, 503, "the job queue is unavailable; try again shortly",
                                headers={"Retry-After": "5"})

    @app.exception_handler(LibraryError)
    async def library_error(request: Request, exc: Exception) -> Response:
        return problem_response(request, 422, str(exc))

    return app

