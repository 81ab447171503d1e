"""POST /transfers (202 + a batch of jobs on the `train` queue), GET /transfers[/{id}], DELETE /transfers/{id}.

A batch is one target, its sources and seeds: one job fine-tunes the no-transfer baseline for every
seed, and one job per source fine-tunes the source (or takes it from the checkpoint cache) and then
the target from it. The batch's answer puts each source's mean score beside the baseline's.

A multi-source method (ScaLearn and its variants, AdapterFusion, PEMT, CA-MTL) runs one "combined"
job over all the sources together instead of one per source; its answer (`combined`) has the score,
the gain over the baseline, the trained parameters and the weight of each source.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, status

from app.deps import JobsDep, Reader, Services, SettingsDep, Writer, get_services, visible, visible_dataset
from app.schemas import (
    MULTI_SOURCE_TRANSFER_METHODS,
    Problem,
    TransferCombinedPublic,
    TransferCreate,
    TransferPublic,
    TransferRunPublic,
    TransferSourcePublic,
)
from library.jobs import Job, JobState, JobStore, StoredDataset, StoredTransferBatch
from library.service import LibraryService
from library.settings import Settings
from worker.job_kinds import JOB_KINDS
from worker.payloads import SourceRef, TransferPayload

router = APIRouter(prefix="/transfers", tags=["transfers"])

KIND = JOB_KINDS["transfer"]


# -- where a source's training data lives -------------------------------------------------------------

def source_data_root(settings: Settings) -> Path | None:
    """`data_dir/sources` when it exists, else `../shared/data` from the working directory, else None."""
    return settings.paths.source_data_root(settings.shared_data_dir)


def source_folder(settings: Settings, name: str) -> Path | None:
    """The task folder (with task.json) of a library source, directly under the source data root."""
    root = source_data_root(settings)
    if root is None or not name or "/" in name or "\\" in name or name in (".", ".."):
        return None
    folder = root / name  # a plain name (checked above): an operator's symlinked folder is fine
    return folder if (folder / "task.json").is_file() else None


def _unprocessable(message: str, field: str | None = None) -> HTTPException:
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                         {"message": message, **({"field": field} if field else {})})


def _resolve_sources(settings: Settings, jobs: JobStore, library: LibraryService, owner: str | None,
                     keys: list[str], ranks: dict[str, int]) -> list[dict[str, Any]]:
    """Each key is a library task name (data from the source data root) or an uploaded dataset id."""
    resolved = []
    for key in keys:
        task = library.store.get_task(key)
        if task is not None:
            folder = source_folder(settings, task.name)
            if folder is None:
                root = source_data_root(settings)
                where = f"no folder {task.name}/ with task.json under {root}" if root else (
                    f"neither {settings.paths.sources} nor {settings.shared_data_dir} exists")
                raise _unprocessable(f"no training data for source {key!r}: {where}", "sources")
            resolved.append({"key": key, "name": task.name, "kind": "library", "task_type": task.task_type,
                             "rank": ranks.get(key), "path": str(folder)})
            continue
        record = jobs.get_dataset(key)
        if record is not None and visible(owner, record.owner, settings):
            resolved.append({"key": key, "name": record.name, "kind": "dataset", "task_type": record.task_type,
                             "rank": ranks.get(key), "dataset_id": record.id})
            continue
        raise _unprocessable(f"unknown source {key!r}: neither a library task nor an uploaded dataset id",
                             "sources")
    return resolved


def _from_ranking(jobs: JobStore, settings: Settings, owner: str | None, target: StoredDataset,
                  ranking_id: str, top_k: int | None) -> tuple[list[str], dict[str, int]]:
    ranking = jobs.get_ranking(ranking_id)
    if ranking is None or not visible(owner, ranking.owner, settings):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no ranking {ranking_id}")
    ranked = (ranking.result or {}).get("sources")
    if ranked is None:
        job = jobs.get_job(ranking.job_id)
        state = job.state.value if job else "gone"
        raise HTTPException(status.HTTP_409_CONFLICT, {"message": f"ranking {ranking_id} is {state}: it has no "
                                                                  "sources to transfer from yet"})
    ranked_on = jobs.get_dataset(ranking.dataset_id)
    if ranking.dataset_id != target.id and (ranked_on is None or ranked_on.content_hash != target.content_hash):
        raise _unprocessable(f"ranking {ranking_id} ranks sources for another dataset than {target.id}",
                             "from_ranking")
    if not ranked:
        raise _unprocessable(f"ranking {ranking_id} has no sources", "from_ranking")
    chosen = sorted(ranked, key=lambda s: s["rank"])[: top_k or len(ranked)]
    return [s["name"] for s in chosen], {s["name"]: int(s["rank"]) for s in chosen}


def _ranking_scores(jobs: JobStore, ranking_id: str) -> dict[str, float]:
    """The ranking's score per source name (its fused similarity): PEMT's correlation prior."""
    ranking = jobs.get_ranking(ranking_id)
    ranked = ((ranking.result if ranking is not None else None) or {}).get("sources") or []
    return {s["name"]: float(s["score"]) for s in ranked if s.get("score") is not None}


def _where(entry: dict[str, Any]) -> dict[str, str]:
    """Where a resolved source's training data is, for the worker."""
    return {"source_path": entry["path"]} if entry["kind"] == "library" else {"source_dataset_id": entry["dataset_id"]}


# -- the batch as the API shows it ----------------------------------------------------------------------

def _mean_std(scores: list[float]) -> tuple[float, float]:
    return statistics.fmean(scores), statistics.stdev(scores) if len(scores) > 1 else 0.0


def _run_public(job: Job | None) -> dict[str, Any]:
    if job is None:  # deleted from the job table
        return {"job_id": None, "state": "failed", "stage": "gone", "progress": 0.0, "eta_seconds": None,
                "error": "the job record is gone"}
    run: dict[str, Any] = {"job_id": job.id, "state": job.state.value, "stage": job.stage,
                           "progress": round(100.0 * job.progress, 1), "error": job.error,
                           "eta_seconds": None if job.eta_seconds is None else round(job.eta_seconds, 1)}
    result = job.result or {}
    if job.state == JobState.SUCCEEDED and result.get("scores"):
        scores = [float(s) for s in result["scores"]]
        mean, std = _mean_std(scores)
        run.update(scores=scores, mean=mean, std=std)
    return run


def batch_state(found: list[Job | None]) -> str:
    states = [j.state if j else JobState.FAILED for j in found]
    if any(s in (JobState.QUEUED, JobState.RUNNING) for s in states):
        started = any(s != JobState.QUEUED for s in states)
        return JobState.RUNNING.value if started else JobState.QUEUED.value
    if all(s == JobState.SUCCEEDED for s in states):
        return JobState.SUCCEEDED.value
    return JobState.FAILED.value if JobState.FAILED in states else JobState.CANCELLED.value


def _combined_public(job: Job | None, method: str, base_mean: float | None) -> dict[str, Any]:
    """A multi-source method's one job: its run, gain, trained parameters and per-source weights."""
    run = _run_public(job)
    if run.get("mean") is not None and base_mean is not None:
        gain = run["mean"] - base_mean
        run.update(gain=gain, relative_gain=100.0 * gain / base_mean if base_mean else None)
    result = (job.result if job is not None else None) or {}
    run.update(method=method, trained_parameters=result.get("trained_parameters"),
               method_parameters=result.get("method_parameters"), weight_kind=result.get("weight_kind"),
               weights=result.get("source_weights"), single_adapter_mean=result.get("single_adapter_mean"),
               seconds=result.get("seconds"))
    return run


def transfer_public(batch: StoredTransferBatch, jobs: JobStore) -> TransferPublic:
    by_id = jobs.transfer_batch_jobs(batch)
    baseline_job = by_id.get(batch.job_ids.get("baseline") or "")
    baseline = _run_public(baseline_job)
    base_mean = baseline.get("mean")
    combined_id = batch.job_ids.get("combined")
    combined_job = by_id.get(combined_id) if combined_id else None
    combined = _combined_public(combined_job, batch.method, base_mean) if combined_id else None
    sources = []
    source_jobs: list[Job | None] = []
    for entry in batch.sources:
        if combined is not None:  # a multi-source method: every source is in the one combined job
            run = {k: v for k, v in _run_public(combined_job).items() if k not in ("scores", "mean", "std")}
            sources.append(TransferSourcePublic(key=entry["key"], name=entry["name"], kind=entry["kind"],
                                                task_type=entry.get("task_type"), rank=entry.get("rank"),
                                                weight=(combined.get("weights") or {}).get(entry["key"]), **run))
            continue
        job = by_id.get((batch.job_ids.get("sources") or {}).get(entry["key"], ""))
        source_jobs.append(job)
        run = _run_public(job)
        if run.get("mean") is not None and base_mean is not None:
            gain = run["mean"] - base_mean
            run.update(gain=gain, relative_gain=100.0 * gain / base_mean if base_mean else None)
        if job is not None and job.result:
            run["checkpoint_reused"] = job.result.get("checkpoint_reused")
        sources.append(TransferSourcePublic(key=entry["key"], name=entry["name"], kind=entry["kind"],
                                            task_type=entry.get("task_type"), rank=entry.get("rank"), **run))
    every = [baseline_job, *source_jobs] + ([combined_job] if combined_id else [])
    metric = next((j.result.get("main_metric") for j in every if j is not None and j.result), None)
    progress = sum(j.progress if j else 1.0 for j in every) / len(every)
    return TransferPublic(
        id=batch.id, target_dataset_id=batch.target_dataset_id, dev_dataset_id=batch.dev_dataset_id,
        ranking_id=batch.ranking_id, method=batch.method, seeds=batch.seeds, options=batch.options,
        state=batch_state(every), progress=round(100.0 * progress, 1), main_metric=metric,
        baseline=TransferRunPublic(**baseline), sources=sources, job_ids=batch.all_job_ids,
        combined=TransferCombinedPublic(**combined) if combined is not None else None, created_at=batch.created_at)


def visible_batch(jobs: JobStore, settings: Settings, owner: str | None, transfer_id: str) -> StoredTransferBatch:
    batch = jobs.get_transfer_batch(transfer_id)
    if batch is None or not visible(owner, batch.owner, settings):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no transfer {transfer_id}")
    return batch


# -- routes ---------------------------------------------------------------------------------------------

ServicesDep = Annotated[Services, Depends(get_services)]


@router.post("", status_code=202, response_model=TransferPublic,
             responses={404: {"model": Problem, "description": "No such dataset or ranking"},
                        409: {"model": Problem, "description": "The ranking has no result yet"},
                        422: {"model": Problem}, 503: {"model": Problem}})
def create_transfer(body: TransferCreate, services: ServicesDep, owner: Writer) -> TransferPublic:
    """A batch: one job for the no-transfer baseline and one per source (each over every seed), on the
    `train` queue. Sources are library task names (their data from `data_dir/sources`, else
    ../shared/data) or uploaded dataset ids; or the top-k of a finished ranking of the target."""
    jobs, settings = services.jobs, services.settings
    target = visible_dataset(jobs, settings, owner, body.target_dataset_id)
    dev_id = None
    if body.dev_dataset_id is not None:
        dev = visible_dataset(jobs, settings, owner, body.dev_dataset_id)
        if dev.task_type != target.task_type:
            raise _unprocessable(f"the dev dataset is {dev.task_type} but the target is {target.task_type}",
                                 "dev_dataset_id")
        dev_id = dev.id
    else:  # the worker will hold out 20% of the target: refuse now what it would refuse then
        from embeddings.splits import group_sizes, hold_out_error

        too_small = hold_out_error(group_sizes(target.task_type, target.rows, target.labels))
        if too_small:
            raise _unprocessable(too_small, "target_dataset_id")
    if body.from_ranking is not None:
        keys, ranks = _from_ranking(jobs, settings, owner, target, body.from_ranking.ranking_id,
                                    body.from_ranking.top_k)
    else:
        keys, ranks = list(body.sources or []), {}
    sources = _resolve_sources(settings, jobs, services.library, owner, keys, ranks)
    seeds = list(body.seeds)
    options = body.options.model_dump()
    payloads = [TransferPayload(role="baseline", seeds=seeds)]
    if body.method in MULTI_SOURCE_TRANSFER_METHODS:  # one job with every source, beside the baseline
        scores = _ranking_scores(jobs, body.from_ranking.ranking_id) if body.from_ranking else {}
        payloads.append(TransferPayload(role="combined", method=body.method, seeds=seeds, sources=[
            SourceRef(**_where(entry), key=entry["key"], name=entry["name"], score=scores.get(entry["key"]))
            for entry in sources]))
    for entry in sources if body.method not in MULTI_SOURCE_TRANSFER_METHODS else []:
        payloads.append(TransferPayload(role="source", source=entry["key"], source_name=entry["name"],
                                        source_kind=entry["kind"], seeds=seeds, **_where(entry)))
    params = [p.model_dump(exclude={"batch_id"}) for p in payloads]
    public_sources = [{k: v for k, v in entry.items() if k != "path"} for entry in sources]
    batch, created = jobs.create_transfer_batch(
        target_dataset_id=target.id, dev_dataset_id=dev_id, method=body.method, sources=public_sources,
        seeds=seeds, options=options, job_params=params, kind=KIND.name, queue=KIND.queue,
        ranking_id=body.from_ranking.ranking_id if body.from_ranking else None, owner=owner)
    try:
        for job in created:
            services.enqueue(KIND.name, job.id)  # type: ignore[attr-defined]
    except Exception:
        for job in created:  # a batch is whole or not at all: no half-dispatched batch is left queued
            jobs.request_cancel(job.id)
        raise
    return transfer_public(batch, jobs)


@router.get("", response_model=list[TransferPublic])
def list_transfers(jobs: JobsDep, settings: SettingsDep, owner: Reader,
                   limit: int = Query(20, ge=1, le=200)) -> list[TransferPublic]:
    """The latest batches, newest first."""
    found = jobs.list_transfer_batches(owner=owner if settings.per_key_ownership else None, limit=limit)
    return [transfer_public(b, jobs) for b in found]


@router.get("/{transfer_id}", response_model=TransferPublic, responses={404: {"model": Problem}})
def get_transfer(transfer_id: str, jobs: JobsDep, settings: SettingsDep, owner: Reader) -> TransferPublic:
    """Every job's state and progress; when done, the baseline's and each source's mean ± std over the
    seeds, the gain (source mean minus baseline mean) and the relative gain in % of the baseline."""
    return transfer_public(visible_batch(jobs, settings, owner, transfer_id), jobs)


@router.delete("/{transfer_id}", response_model=TransferPublic, responses={404: {"model": Problem}})
def cancel_transfer(transfer_id: str, jobs: JobsDep, settings: SettingsDep, owner: Writer) -> TransferPublic:
    """Cancel every job of the batch: queued ones at once, running ones at their next progress report;
    finished ones (and their results) stay."""
    batch = visible_batch(jobs, settings, owner, transfer_id)
    for job_id in batch.all_job_ids:
        jobs.request_cancel(job_id)
    return transfer_public(batch, jobs)
