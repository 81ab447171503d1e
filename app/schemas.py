"""Pydantic models at the HTTP edge: separate input and output schemas for every resource."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from embeddings.data import TaskType
from embeddings.registry import MULTI_SOURCE_METHODS, TRANSFER_METHODS
from library.jobs import JobState
from library.methods import DEFAULT_METHOD, RANKING_METHODS
from worker.payloads import TransferRunOptions

TaskTypeName = TaskType  # the enum's values are the schema's enum (embeddings.task_types describes each)


def _registered_method(name: str) -> str:
    if name not in RANKING_METHODS:
        raise ValueError(f"unknown ranking method {name!r}; expected one of {', '.join(RANKING_METHODS.names())}")
    return name


def _method_enum(schema: dict[str, Any]) -> None:
    """The OpenAPI enum is the registry as it is when the schema is generated."""
    schema["enum"] = list(RANKING_METHODS.names())


RankMethod = Annotated[str, AfterValidator(_registered_method), Field(json_schema_extra=_method_enum)]
JobStateName = JobState


class ValidationIssue(BaseModel):
    """One way a request failed its schema (a 422's `errors`)."""

    loc: list[str | int] = Field(..., description="Where: body, query or path, then the field's path.")
    msg: str
    type: str


class Problem(BaseModel):
    """Every 4xx and 5xx answer: RFC 9457 problem details, served as `application/problem+json`."""

    type: str = Field("about:blank", description="A URI for the kind of problem; about:blank: the status says it.")
    title: str = Field(..., description="The status code's phrase, e.g. 'Unprocessable Content'.")
    status: int = Field(..., ge=400, le=599)
    detail: str = Field(..., description="What went wrong, readable.")
    instance: str | None = None
    file: str | None = Field(None, description="Bad data: the uploaded file's name.")
    line: int | None = Field(None, description="Bad data: the line (1-based).")
    column: int | None = Field(None, description="Bad data: the column (1-based) or byte offset in the line.")
    field: str | None = Field(None, description="The field, column or request member that is wrong.")
    errors: list[ValidationIssue] | None = Field(None, description="A request that fails its schema: every issue.")


class DatasetRows(BaseModel):
    """A JSON body of rows, in the JSONL schema of the file formats."""

    model_config = ConfigDict(extra="forbid")
    rows: list[dict[str, Any]] = Field(..., min_length=1, description="Rows, e.g. {'text': ..., 'label': ...}")
    name: str | None = Field(None, max_length=200)
    task_type: TaskTypeName | None = None
    column_map: dict[str, str] | None = None


class DatasetCheck(BaseModel):
    """What the loader found in an upload (`POST /datasets/validate`: nothing is stored)."""

    name: str
    filename: str
    task_type: TaskTypeName
    rows: int
    labels: dict[str, Any]
    content_hash: str
    size_bytes: int
    description: dict[str, Any]


class DatasetPublic(DatasetCheck):
    """A stored dataset record."""

    id: str
    created_at: datetime


class RankingCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dataset_id: str = Field(..., min_length=1, max_length=64)
    method: RankMethod | None = Field(None, description=(
        f"ranking method; omitted: the service's default, `{DEFAULT_METHOD}` (chosen from the shipped transfer "
        "matrix by a fixed rule; the ensemble where it cannot rank the target, and the ranking's notes say so) "
        "until the learned ranker validates better than every unlearned method on enough targets, then `learned` "
        "(GET /ranker)"))
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
    info: dict[str, Any] | None = Field(None, description="What the method adds: the learned ranker's version "
                                                          "(or the method it fell back to), the target's facts.")
    notes: list[str] | None = Field(None, description="What the user should know about this ranking, e.g. eligible "
                                                      "sources the method left out (taskemb_ft: no checkpoint-based "
                                                      "TaskEmb) and why.")
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


class LibraryRestorePublic(BaseModel):
    added: list[str] = Field(..., description="Shipped sources imported again.")
    skipped: list[str] = Field(..., description="Shipped sources the library already has.")
    library_version: str


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


TransferMethod = Literal[tuple(TRANSFER_METHODS)]  # type: ignore[valid-type]
MULTI_SOURCE_TRANSFER_METHODS = MULTI_SOURCE_METHODS


TransferOptionsIn = TransferRunOptions  # the batch's options are the worker's payload (worker.payloads)


class TransferFromRanking(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ranking_id: str = Field(..., min_length=1, max_length=64)
    top_k: int | None = Field(None, ge=1, le=20, description="The ranking's first k sources (default: all it has).")


class TransferCreate(BaseModel):
    """Give `sources` (library task names or uploaded dataset ids) or `from_ranking`, not both."""

    model_config = ConfigDict(extra="forbid")
    target_dataset_id: str = Field(..., min_length=1, max_length=64)
    dev_dataset_id: str | None = Field(None, min_length=1, max_length=64,
                                       description="Dev data; default: a deterministic 20% of the target held out.")
    sources: list[Annotated[str, Field(min_length=1, max_length=200)]] | None = Field(
        None, min_length=1, max_length=20, description="Library task names or uploaded dataset ids.")
    from_ranking: TransferFromRanking | None = None
    method: TransferMethod = "intermediate"
    seeds: list[Annotated[int, Field(ge=0, le=2**31 - 1)]] = Field([13, 14], min_length=1, max_length=10)
    options: TransferOptionsIn = Field(default_factory=TransferOptionsIn)

    @model_validator(mode="after")
    def _one_way_to_pick_sources(self) -> TransferCreate:
        if (self.sources is None) == (self.from_ranking is None):
            raise ValueError("give either sources or from_ranking, not both and not neither")
        if self.sources is not None and len(set(self.sources)) != len(self.sources):
            raise ValueError("sources must not repeat")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError("seeds must not repeat")
        return self


class TransferRunPublic(BaseModel):
    """One job of a batch (the baseline, or a source then the target) and its scores over the seeds."""

    job_id: str | None
    state: JobStateName
    stage: str
    progress: float = Field(..., description="Percent done, 0-100.")
    eta_seconds: float | None
    error: str | None
    scores: list[float] | None = None
    mean: float | None = None
    std: float | None = None


class TransferSourcePublic(TransferRunPublic):
    key: str = Field(..., description="As requested: a library task name or an uploaded dataset id.")
    name: str
    kind: Literal["library", "dataset"]
    task_type: str | None
    rank: int | None = Field(None, description="The source's rank in the recommendation (from_ranking).")
    gain: float | None = Field(None, description="Mean minus the baseline mean, in the metric's points.")
    relative_gain: float | None = Field(None, description="The gain in percent of the baseline mean.")
    checkpoint_reused: bool | None = None
    weight: float | None = Field(None, description="Multi-source methods: the combination's weight for this "
                                                   "source (see the batch's `combined.weight_kind`).")


class TransferCombinedPublic(TransferRunPublic):
    """The one job of a multi-source method: every source together, then the target, for every seed."""

    method: str
    gain: float | None = Field(None, description="Mean minus the baseline mean, in the metric's points.")
    relative_gain: float | None = Field(None, description="The gain in percent of the baseline mean.")
    trained_parameters: int | None = Field(None, description="Parameters trained in stage 2, heads included.")
    method_parameters: int | None = Field(None, description="The same without the task heads.")
    weight_kind: str | None = Field(None, description="scale (ScaLearn), attention (AdapterFusion), gate (PEMT), "
                                                      "task_examples (CA-MTL: share of training examples).")
    weights: dict[str, float] | None = Field(None, description="Per source key (and 'target' where its own "
                                                               "adapter or head takes part).")
    single_adapter_mean: float | None = Field(None, description="The target's own adapter alone, mean over seeds.")
    seconds: float | None = Field(None, description="Mean wall time per seed.")


class TransferPublic(BaseModel):
    id: str
    target_dataset_id: str
    dev_dataset_id: str | None
    ranking_id: str | None
    method: TransferMethod
    seeds: list[int]
    options: dict[str, Any]
    state: JobStateName
    progress: float = Field(..., description="Percent done over all the batch's jobs, 0-100.")
    main_metric: str | None
    baseline: TransferRunPublic
    sources: list[TransferSourcePublic]
    combined: TransferCombinedPublic | None = Field(None, description="Multi-source methods: their one job.")
    job_ids: list[str]
    created_at: datetime


class RankerPublic(BaseModel):
    """The learned ranker: its active version, every version, its validation table and its features."""

    active: dict[str, Any] | None
    versions: list[dict[str, Any]]
    validation_table: list[dict[str, Any]]
    criteria: dict[str, Any] = Field(default_factory=dict, description="The active version against its bars: "
                                     "NDCG@5 margins over DataSize and the source prior, top-1 helps, coverage, "
                                     "and whether it beats every unlearned method.")
    features: dict[str, str]
    transfer_results: int = Field(..., description="Transfer results recorded from the service's own jobs.")
    default_method: str = Field(..., description="What a ranking request without a method gets: `learned` once "
                                "its active version beat every unlearned method on enough informative targets "
                                "(criteria.may_be_default), else the unlearned method the shipped matrix chose by a fixed rule "
                                "(library/default/default_method.json; the ensemble where it cannot rank the target).")
    default_reason: str = Field("", description="Why the default is that method (the rule's figures, or the "
                                                 "active learned version).")
    note: str | None = None
