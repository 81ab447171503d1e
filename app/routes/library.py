"""GET/POST/DELETE /library/tasks: the source tasks rankings are drawn from."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Response, status

from app.deps import Admin, JobsDep, LibraryDep, Services, SettingsDep, get_services, visible_dataset
from app.routes.jobs import job_public
from app.schemas import JobPublic, LibraryRestorePublic, Problem, SourceTaskCreate, SourceTaskPublic
from library.errors import LibraryError
from library.store import SourceTask
from worker.job_kinds import JOB_KINDS
from worker.payloads import AddSourcePayload

router = APIRouter(prefix="/library", tags=["library"])
ADMIN_ONLY: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "Missing or invalid API key"},
    403: {"model": Problem, "description": "Not an admin key (TASKRANK_ADMIN_KEYS)"}}


def task_public(task: SourceTask) -> SourceTaskPublic:
    return SourceTaskPublic.model_validate(task, from_attributes=True)


@router.get("/tasks", response_model=list[SourceTaskPublic])
def list_tasks(library: LibraryDep) -> list[SourceTaskPublic]:
    return [task_public(t) for t in library.store.list_tasks()]


@router.post("/tasks", status_code=202, response_model=JobPublic,
             responses={**ADMIN_ONLY, 404: {"model": Problem}, 409: {"model": Problem}})
def add_task(body: SourceTaskCreate, jobs: JobsDep, library: LibraryDep, settings: SettingsDep, owner: Admin,
             services: Annotated[Services, Depends(get_services)]) -> JobPublic:
    """Add an uploaded dataset as a source: an embedding job with the library's own options (admin key)."""
    dataset = visible_dataset(jobs, settings, owner, body.dataset_id)
    name = body.name or dataset.name
    if library.store.get_task(name) is not None:
        raise HTTPException(status.HTTP_409_CONFLICT, f"source task {name!r} already exists")
    kind = JOB_KINDS["add_source"]
    job = jobs.create_job(kind.name, params=AddSourcePayload(name=name, description=body.description).model_dump(),
                          dataset_id=dataset.id, queue=kind.queue, owner=owner)
    services.enqueue(kind.name, job.id)
    return job_public(jobs.get_job(job.id) or job)


@router.delete("/tasks/{task}", status_code=204, responses={**ADMIN_ONLY, 404: {"model": Problem}})
def remove_task(task: str, library: LibraryDep, owner: Admin) -> Response:
    """Remove by id or name (admin key). A removed shipped source comes back with `POST /library/restore-default`."""
    key: str | int = int(task) if task.isdigit() else task
    try:
        library.store.remove_task(key)
    except LibraryError:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no source task {task}") from None
    return Response(status_code=204)


@router.post("/restore-default", response_model=LibraryRestorePublic, responses={**ADMIN_ONLY, 422: {"model": Problem}})
def restore_default(library: LibraryDep, owner: Admin) -> LibraryRestorePublic:
    """Import again the shipped sources the library is missing (admin key); tasks it has are left alone."""
    from library.bundle import restore_default_library

    report = restore_default_library(library.store)
    return LibraryRestorePublic(added=report.added, skipped=report.skipped, library_version=report.library_version)
