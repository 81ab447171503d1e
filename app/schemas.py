"""Pydantic models at the HTTP edge: separate input and output schemas for every resource."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

TaskTypeName = Literal["classification", "regression", "question_answering", "sequence_labeling"]
RankMethod = Literal["textemb", "semb", "taskemb", "ensemble"]
JobStateName = Literal["queued", "running", "succeeded", "failed", "cancelled"]


class ErrorDetail(BaseModel):
    message: str
    file: str | None = None
    line: int | None = None
    column: int | None = None
    field: str | None = None


class ErrorResponse(BaseModel):
    detail: ErrorDetail | str


class DatasetRows(BaseModel):
    """A JSON body of rows, in the JSONL schema of the file formats."""

    model_config = ConfigDict(extra="forbid")
    rows: list[dict[str, Any]] = Field(..., min_length=1, description="Rows, e.g. {'text': ..., 'label': ...}")
    name: str | None = Field(None, max_length=200)
    task_type: TaskTypeName | None = None
    column_map: dict[str, str] | None = None


class DatasetPublic(BaseModel):
    id: str
    name: str
    filename: str
    task_type: TaskTypeName
    rows: int
    labels: dict[str, Any]
    content_hash: str
    size_bytes: int
    created_at: datetime
    description: dict[str, Any]


class RankingCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dataset_id: str = Field(..., min_length=1, max_length=64)
    method: RankMethod = "ensemble"
    top_k: int = Field(10, ge=1, le=1000)
    all_class: bool = False


class RankedSourcePublic(BaseModel):
    rank: int
    name: str
    task_type: str
    num_train: int
    score: float
    details: dict[str, dict[str, Any]]


class JobPublic(BaseModel):
    id: str
    kind: str
    state: JobStateName
    stage: str
    progress: float = Field(..., description="Percent done, 0-100.")
    done: int
    total: int
    eta_seconds: float | None
    error: str | None
    dataset_id: str | None
    queue: str
    attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    duration_seconds: float | None
    result: dict[str, Any] | None


class RankingPublic(BaseModel):
    id: str
    dataset_id: str
    method: RankMethod
    top_k: int
    all_class: bool
    job_id: str
    state: JobStateName
    progress: float
    cached: bool = False
    library_version: str | None = None
    model_name: str | None = None
    target: dict[str, Any] | None = None
    sources: list[RankedSourcePublic] | None = None
    error: str | None = None


class SourceTaskPublic(BaseModel):
    id: int
    name: str
    task_type: str
    description: str
    num_train: int
    num_dev: int | None
    data_hash: str
    provenance: dict[str, Any]
    created_at: datetime


class SourceTaskCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dataset_id: str = Field(..., min_length=1, max_length=64)
    name: str | None = Field(None, min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.\-]+$")
    description: str = Field("", max_length=2000)


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    database: str
    broker: str
    workers: int
    library_tasks: int | None
    library_version: str | None
