"""GET /jobs, GET /jobs/{id} (state, percent, ETA, error), DELETE /jobs/{id} (cancel)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Annotated, TypeVar

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response, status
from starlette.concurrency import run_in_threadpool

from app.deps import JobsDep, Reader, Services, SettingsDep, Writer, get_services, reader, visible, writer
from app.schemas import JobPublic, JobStateName, Problem
from library.jobs import Job

router = APIRouter(prefix="/jobs", tags=["jobs"])


def job_public(job: Job) -> JobPublic:
    """The job as the API shows it: progress in percent, times rounded (the rest as stored)."""
    public = JobPublic.model_validate(job, from_attributes=True)
    return public.model_copy(update={
        "progress": round(100.0 * job.progress, 1),
        "eta_seconds": None if job.eta_seconds is None else round(job.eta_seconds, 1),
        "duration_seconds": None if job.duration_seconds is None else round(job.duration_seconds, 3)})


# The hot routes (GET /jobs/{id}, POST /rankings) are async with async dependencies and ONE thread-pool
# hop for their database calls: FastAPI runs every sync dependency and sync endpoint in the thread
# pool, and those hand-offs (five or six a request with app.deps) cost more than the work itself
# under load (bench/api_load.py). These two are app.deps.reader/writer, same checks, no hop.
async def reader_inline(request: Request) -> str | None:
    return reader(request, get_services(request).settings)


async def writer_inline(request: Request) -> str | None:
    return writer(request, get_services(request).settings)


ReaderInline = Annotated[str | None, Depends(reader_inline)]
WriterInline = Annotated[str | None, Depends(writer_inline)]


T = TypeVar("T")


async def store_read(services: Services, read: Callable[..., T], *args: object) -> T:
    """A job-store read of a hot route. SQLite: on the event loop - reading a few rows in-process takes
    ~0.1 ms, less than the thread hop, and with both cores free the GIL hand-offs between the loop and
    the pool's threads doubled the API's CPU per request under load (bench/api_load.py). A network
    database: in the thread pool, where a slow server holds up one thread, not every request."""
    if services.jobs.in_process:
        return read(*args)
    return await run_in_threadpool(read, *args)


def server_timing(started: float) -> str:
    """`Server-Timing: app;dur=<ms>`: time in the endpoint (thread-pool wait included), for load tests."""
    return f"app;dur={(time.perf_counter() - started) * 1000:.2f}"


def visible_job(jobs: JobsDep, settings: SettingsDep, owner: str | None, job_id: str) -> Job:
    job = jobs.get_job(job_id)
    if job is None or not visible(owner, job.owner, settings):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no job {job_id}")
    return job


@router.get("", response_model=list[JobPublic])
def list_jobs(jobs: JobsDep, settings: SettingsDep, owner: Reader, state: JobStateName | None = None,
              limit: int = Query(50, ge=1, le=1000)) -> list[JobPublic]:
    found = jobs.list_jobs(state=state, owner=owner if settings.per_key_ownership else None, limit=limit)
    return [job_public(j) for j in found]


@router.get("/{job_id}", response_model=JobPublic, responses={404: {"model": Problem}})
async def get_job(job_id: str, request: Request, response: Response, owner: ReaderInline) -> JobPublic:
    started = time.perf_counter()  # polled by every client while its job runs: see reader_inline
    services = get_services(request)
    job = await store_read(services, visible_job, services.jobs, services.settings, owner, job_id)
    response.headers["Server-Timing"] = server_timing(started)
    return job_public(job)


@router.delete("/{job_id}", response_model=JobPublic, responses={404: {"model": Problem}})
def cancel_job(job_id: str, jobs: JobsDep, settings: SettingsDep, owner: Writer) -> JobPublic:
    """Queued: cancelled at once. Running: stops at its next progress report. Finished: unchanged."""
    visible_job(jobs, settings, owner, job_id)
    job = jobs.request_cancel(job_id)
    assert job is not None
    return job_public(job)
