"""POST /rankings (202 + job, or the stored result at once), GET /rankings/{id}."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Literal

from fastapi import APIRouter, HTTPException, Request, Response, status
from starlette.concurrency import run_in_threadpool

from app.deps import JobsDep, Reader, Services, SettingsDep, get_services, visible, visible_dataset
from app.routes.jobs import WriterInline, server_timing, store_read
from app.schemas import Problem, RankingCreate, RankingPublic
from library.jobs import Job, JobState, StoredDataset, StoredRanking
from library.ranker import default_for
from library.ranker_store import RankerStore
from worker.job_kinds import JOB_KINDS
from worker.payloads import RankPayload

router = APIRouter(prefix="/rankings", tags=["rankings"])


def request_key(content_hash: str, model: str, library_version: str, body: RankingCreate,
                similarity: str, ranker_version: int | None = None) -> str:
    """Same data, model, library, similarity and options (and, for the learned method, the same active
    ranker version): the same ranking, answered from the store."""
    parts: list[object] = [content_hash, model, library_version, similarity, body.method, body.top_k, body.all_class]
    if body.method == "learned":
        parts.append(ranker_version)
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def ranking_public(ranking: StoredRanking, jobs: JobsDep, cached: bool = False, job: Job | None = None) -> RankingPublic:
    """`job`: the ranking's job when the caller has just read it (saves reading it again)."""
    job = job or jobs.get_job(ranking.job_id)
    result = ranking.result or {}
    return RankingPublic(
        id=ranking.id, dataset_id=ranking.dataset_id, method=ranking.method, top_k=ranking.top_k,
        all_class=ranking.all_class, job_id=ranking.job_id, cached=cached,
        state=job.state.value if job else ("succeeded" if ranking.result else "failed"),
        progress=round(100 * (job.progress if job else 1.0), 1),
        library_version=result.get("library_version"), model_name=result.get("model_name"),
        target=result.get("target"), sources=result.get("sources"), info=result.get("info"),
        notes=result.get("notes"),
        error=job.error if job else None)


@router.post("", status_code=202, response_model=RankingPublic,
             responses={200: {"model": RankingPublic, "description": "Answered from a stored ranking"},
                        404: {"model": Problem}, 503: {"model": Problem}})
async def create_ranking(body: RankingCreate, request: Request, response: Response,
                         owner: WriterInline) -> RankingPublic:
    # The hot path (identical requests answered from the store) only reads: see store_read. Anything
    # else (a new job, a failed one to retry, a race) in one thread-pool hop.
    started = time.perf_counter()
    services = get_services(request)
    found, answer = await store_read(services, _stored_answer, services, owner, body)
    public, code = answer or await run_in_threadpool(_create, services, owner, body, found)
    response.status_code = code
    response.headers["Server-Timing"] = server_timing(started)
    return public


@dataclass
class _Lookup:
    dataset: StoredDataset
    key: str
    existing: StoredRanking | None
    existing_job: Job | None
    default_note: str | None = None  # why a request without a method got the one it did


def _lookup(services: Services, owner: str | None, body: RankingCreate,
            dataset: StoredDataset | None = None) -> _Lookup:
    """`dataset`: the request's dataset when the caller has just read it (saves reading it again)."""
    jobs, settings = services.jobs, services.settings
    dataset = dataset or visible_dataset(jobs, settings, owner, body.dataset_id)
    ranker_version = RankerStore.for_engine(jobs.engine).active_id() if body.method == "learned" else None
    key = request_key(dataset.content_hash, settings.model, services.library.store.version(), body,
                      settings.similarity, ranker_version)
    return _Lookup(dataset, key, *jobs.find_ranking_with_job(key))


def _answer(services: Services, owner: str | None, found: _Lookup) -> tuple[RankingPublic, int] | None:
    """The stored ranking, when it may simply be returned: visible to `owner`, and not a failed attempt."""
    existing, job = found.existing, found.existing_job
    if existing is None or not visible(owner, existing.owner, services.settings):
        return None
    if job is not None and job.state in (JobState.FAILED, JobState.CANCELLED):
        return None
    code = status.HTTP_200_OK if existing.result is not None else status.HTTP_202_ACCEPTED
    return ranking_public(existing, services.jobs, cached=existing.result is not None, job=job), code


def _stored_answer(services: Services, owner: str | None,
                   body: RankingCreate) -> tuple[_Lookup, tuple[RankingPublic, int] | None]:
    """The hot path: reads only. The lookup goes on to `_create` when there is no answer."""
    note, dataset = None, None
    if body.method is None:  # the service's default for this target, as it stands now (the key records the method)
        dataset = visible_dataset(services.jobs, services.settings, owner, body.dataset_id)
        body.method, note = default_for(RankerStore.for_engine(services.jobs.engine), dataset.task_type,
                                        services.library.store)
    found = _lookup(services, owner, body, dataset)
    found.default_note = note
    return found, _answer(services, owner, found)


def _create(services: Services, owner: str | None, body: RankingCreate,
            found: _Lookup) -> tuple[RankingPublic, int]:
    """A new ranking job for a request `_stored_answer` could not answer (a race is settled by the
    unique request key in `add_ranking`)."""
    jobs, dataset, key = services.jobs, found.dataset, found.key
    if found.existing is not None and found.existing_job is not None \
            and found.existing_job.state in (JobState.FAILED, JobState.CANCELLED):
        jobs.forget_ranking(found.existing.id)  # a failed attempt is not an answer: try again
    kind = JOB_KINDS["rank"]
    payload = RankPayload(method=body.method, top_k=body.top_k, all_class=body.all_class,
                          default_note=found.default_note)
    job = jobs.create_job(kind.name, params=payload.model_dump(), dataset_id=dataset.id, queue=kind.queue, owner=owner)
    ranking, created = jobs.add_ranking(request_key=key, dataset_id=dataset.id, job_id=job.id, method=body.method,
                                        top_k=body.top_k, all_class=body.all_class, owner=owner)
    if not created:  # an identical request won the race: answer with its job
        jobs.mark_cancelled(job.id)
        return ranking_public(ranking, jobs), status.HTTP_202_ACCEPTED
    jobs.set_job_params(job.id, payload.model_copy(update={"ranking_id": ranking.id}).model_dump())
    services.enqueue(kind.name, job.id)
    return ranking_public(ranking, jobs), status.HTTP_202_ACCEPTED


def with_estimates(public: RankingPublic, jobs: JobsDep, settings: SettingsDep) -> RankingPublic:
    """A learned ranking, with each source's estimated transfer time on this machine and expected gain per
    minute in `info.estimates` (`library.costs`): read when asked, as the checkpoint cache changes."""
    if public.method != "learned" or not public.sources:
        return public
    from library.costs import cached_checkpoints, estimates, row_rate
    from library.transfers import read_sidecar, sidecar_path

    results = RankerStore.for_engine(jobs.engine).results()
    sidecar = read_sidecar(sidecar_path(settings.resolved_transfer_matrix))
    rate = row_rate(results, sidecar)
    dataset = jobs.get_dataset(public.dataset_id)
    cached = cached_checkpoints(settings.paths.checkpoints, sidecar, results)
    found = estimates([s.model_dump() for s in public.sources], dataset.rows if dataset else None, rate, cached)
    info = dict(public.info or {}) | {"estimates": found, "time_basis": rate.basis if rate else None}
    return public.model_copy(update={"info": info})


@router.get("/{ranking_id}", response_model=RankingPublic, responses={404: {"model": Problem}})
def get_ranking(ranking_id: str, jobs: JobsDep, settings: SettingsDep, owner: Reader,
                sort: Literal["rank", "gain_per_minute"] = "rank") -> RankingPublic:
    """The ranking; a learned one also carries each source's estimated transfer time (`info.estimates`) and
    can be sorted by expected gain per minute (`sort=gain_per_minute`; ranks are kept)."""
    ranking = jobs.get_ranking(ranking_id)
    if ranking is None or not visible(owner, ranking.owner, settings):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no ranking {ranking_id}")
    public = with_estimates(ranking_public(ranking, jobs), jobs, settings)
    estimates = (public.info or {}).get("estimates") or {}
    if sort == "gain_per_minute" and estimates and public.sources:
        def per_minute(name: str) -> float:
            value = (estimates.get(name) or {}).get("gain_per_minute")
            return float(value) if value is not None else float("-inf")

        public = public.model_copy(update={"sources": sorted(public.sources, key=lambda s: -per_minute(s.name))})
    return public
