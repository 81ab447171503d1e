"""Dependencies injected into routes; tests override them through `app.dependency_overrides`."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status

from library.jobs import JobStore, StoredDataset
from library.service import LibraryService
from library.settings import Settings


@dataclass
class Services:
    """Shared resources built once in the app's lifespan."""

    settings: Settings
    jobs: JobStore
    library: LibraryService


def get_services(request: Request) -> Services:
    return request.app.state.services


def get_jobs(services: Annotated[Services, Depends(get_services)]) -> JobStore:
    return services.jobs


def get_library(services: Annotated[Services, Depends(get_services)]) -> LibraryService:
    return services.library


def app_settings(services: Annotated[Services, Depends(get_services)]) -> Settings:
    return services.settings


SettingsDep = Annotated[Settings, Depends(app_settings)]
JobsDep = Annotated[JobStore, Depends(get_jobs)]
LibraryDep = Annotated[LibraryService, Depends(get_library)]


def _key_owner(request: Request, settings: Settings, required: bool) -> str | None:
    keys = settings.api_key_set
    if not keys:
        return None
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    valid = scheme.lower() == "bearer" and any(secrets.compare_digest(token.strip(), k) for k in keys)
    if not valid:
        if not required:
            return None
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "a valid API key is required: Authorization: Bearer <key>",
                            headers={"WWW-Authenticate": "Bearer"})
    return hashlib.sha256(token.strip().encode()).hexdigest()[:16] if settings.per_key_ownership else None


def writer(request: Request, settings: SettingsDep) -> str | None:
    """Writes need a key when keys are configured; returns the owner id under per-key ownership."""
    return _key_owner(request, settings, required=True)


def reader(request: Request, settings: SettingsDep) -> str | None:
    return _key_owner(request, settings, required=settings.auth_reads or settings.per_key_ownership)


def admin(request: Request, settings: SettingsDep) -> str | None:
    """Writes to the shared library: with keys configured, an admin key (TASKRANK_ADMIN_KEYS); 401 without a
    valid key, 403 with a key that is not an admin's. Returns the owner id like `writer`."""
    owner = _key_owner(request, settings, required=True)
    if not settings.api_key_set:
        return owner  # no keys configured: the service is open, as for every other write
    token = request.headers.get("authorization", "").partition(" ")[2].strip()
    if not any(secrets.compare_digest(token, k) for k in settings.admin_key_set):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "changing the shared library needs an admin key "
                                                       "(TASKRANK_ADMIN_KEYS)")
    return owner


Writer = Annotated[str | None, Depends(writer)]
Admin = Annotated[str | None, Depends(admin)]
Reader = Annotated[str | None, Depends(reader)]


def visible(owner: str | None, record_owner: str | None, settings: Settings) -> bool:
    return not settings.per_key_ownership or owner == record_owner


def visible_dataset(jobs: JobStore, settings: Settings, owner: str | None, dataset_id: str) -> StoredDataset:
    """The dataset `owner` may see, or 404 (another owner's dataset is as absent as a missing one)."""
    record = jobs.get_dataset(dataset_id)
    if record is None or not visible(owner, record.owner, settings):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no dataset {dataset_id}")
    return record
