"""GET/POST/DELETE /library/tasks: the source tasks rankings are drawn from."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Response, status

from app.deps import JobsDep, LibraryDep, Services, SettingsDep, Writer, get_services, visible_dataset
from app.routes.jobs import job_public
from app.schemas import ErrorResponse, JobPublic, SourceTaskCreate, SourceTaskPublic
from library.errors import LibraryError
from library.store import SourceTask
from worker.job_kinds import JOB_KINDS
from worker.payloads import AddSourcePayload

router = APIRouter(prefix="/library", tags=["library"])


def task_public(task: SourceTask) -> SourceTaskPublic:
    return SourceTaskPublic.model_validate(task, from_attributes=True)


@router.get("/tasks", response_model=list[SourceTaskPublic])
def list_tasks(library: LibraryDep) -> list[SourceTaskPublic]:
    return [task_public(t) for t in library.store.list_tasks()]


@router.post("/tasks", status_code=202, response_model=JobPublic,
             responses={404: {"model": ErrorResponse}, 409: {"model": ErrorResponse}})
def add_task(body: SourceTaskCreate, jobs: JobsDep, library: LibraryDep, settings: SettingsDep, owner: Writer,
             services: Annotated[Services, Depends(get_services)]) -> JobPublic:
    """Add an uploaded dataset as a source: an embedding job with the library's own options."""
    dataset = visible_dataset(jobs, settings, owner, body.dataset_id)
    name = body.name or dataset.name
    if library.store.get_task(name) is not None:
        raise HTTPException(status.HTTP_409_CONFLICT, f"source task {name!r} already exists")
    kind = JOB_KINDS["add_source"]
    job = jobs.create_job(kind.name, params=AddSourcePayload(name=name, description=body.description).model_dump(),
                          dataset_id=dataset.id, queue=kind.queue, owner=owner)
    services.enqueue(kind.name, job.id)
    return job_public(jobs.get_job(job.id) or job)


@router.delete("/tasks/{task}", status_code=204, responses={404: {"model": ErrorResponse}})
def remove_task(task: str, library: LibraryDep, owner: Writer) -> Response:
    """Remove by id or name."""
    key: str | int = int(task) if task.isdigit() else task
    try:
        library.store.remove_task(key)
    except LibraryError:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no source task {task}") from None
    return Response(status_code=204)
