"""GET/POST/DELETE /library/tasks: the source tasks rankings are drawn from."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Response, status

from app.deps import JobsDep, LibraryDep, Services, SettingsDep, Writer, get_services
from app.routes.datasets import _get_visible
from app.routes.jobs import job_public
from app.schemas import ErrorResponse, JobPublic, SourceTaskCreate, SourceTaskPublic
from library.errors import LibraryError
from library.store import SourceTask

router = APIRouter(prefix="/library", tags=["library"])


def task_public(task: SourceTask) -> SourceTaskPublic:
    return SourceTaskPublic(id=task.id, name=task.name, task_type=task.task_type, description=task.description,
                            num_train=task.num_train, num_dev=task.num_dev, data_hash=task.data_hash,
                            provenance=task.provenance, created_at=task.created_at)


@router.get("/tasks", response_model=list[SourceTaskPublic])
def list_tasks(library: LibraryDep) -> list[SourceTaskPublic]:
    return [task_public(t) for t in library.store.list_tasks()]


@router.post("/tasks", status_code=202, response_model=JobPublic,
             responses={404: {"model": ErrorResponse}, 409: {"model": ErrorResponse}})
def add_task(body: SourceTaskCreate, jobs: JobsDep, library: LibraryDep, settings: SettingsDep, owner: Writer,
             services: Annotated[Services, Depends(get_services)]) -> JobPublic:
    """Add an uploaded dataset as a source: an embedding job with the library's own options."""
    dataset = _get_visible(jobs, settings, owner, body.dataset_id)
    name = body.name or dataset.name
    if library.store.get_task(name) is not None:
        raise HTTPException(status.HTTP_409_CONFLICT, f"source task {name!r} already exists")
    job = jobs.create_job("add_source", params={"name": name, "description": body.description},
                          dataset_id=dataset.id, queue="embed", owner=owner)
    services.enqueue("add_source", job.id)
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
