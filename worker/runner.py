"""What a job does, as plain functions over the job store and the library (Celery-free, testable).

Every job is idempotent: it starts by asking the job table whether it is still to be done, writes
its output under keys derived from content hashes, and marks success last. A redelivered message
(a worker killed mid-job, a broker restart) finds the finished record and stops.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from embeddings.data import Dataset, DatasetError, LoadLimits, load_dataset
from library.build import add_source, library_options
from library.errors import LibraryError
from library.jobs import JobStore, StoredDataset
from library.service import LibraryService
from library.settings import Settings
from worker.payloads import (
    AddSourcePayload,
    RankerFitPayload,
    RankPayload,
    TransferPayload,
    TransferRunOptions,
)

P = TypeVar("P", bound=BaseModel)

log = logging.getLogger(__name__)


class TransientJobError(Exception):
    """Database or broker unavailable: Celery retries the task with backoff."""


class JobCancelled(Exception):
    """Raised from the progress callback when the job's cancellation was requested."""


@dataclass
class JobProgress:
    """`on_progress(done, total)` into the job record, at most every `interval` seconds."""

    store: JobStore
    job_id: str
    stage: str = "running"
    interval: float = 0.5
    _last: float = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - self._last < self.interval:
            return
        self._last = now
        if not self.store.progress(self.job_id, done, total, self.stage):
            raise JobCancelled(self.job_id)


def dataset_path(settings: Settings, record: StoredDataset) -> Path:
    """Content-addressed: the file's sha256 names it; the client's filename is never a path."""
    return settings.paths.datasets / f"{record.file_sha256}.{record.file_ext}"


def load_stored_dataset(settings: Settings, record: StoredDataset) -> Dataset:
    limits = LoadLimits(max_rows=settings.max_rows, max_text_chars=settings.max_text_chars)
    options = record.load_options
    dataset = load_dataset(dataset_path(settings, record), task_type=record.task_type,
                           column_map=options.get("column_map"), limits=limits, name=record.name)
    return dataset


def run_rank(job_id: str, store: JobStore, service: LibraryService, settings: Settings) -> None:
    job = store.start_job(job_id, settings.job_stale_after)
    if job is None:
        return  # finished, cancelled or deleted: a redelivered message stops here
    payload = _payload(store, job_id, RankPayload, job.params)
    if payload is None:
        return
    ranking = store.get_ranking(payload.ranking_id) if payload.ranking_id else None
    if ranking is not None and ranking.result is not None:
        store.succeed_job(job_id, {"ranking_id": ranking.id})
        return
    progress = JobProgress(store, job_id, stage="loading dataset")
    with _outcome(store, job_id):
        record = store.get_dataset(job.dataset_id or "")
        if record is None:
            raise LibraryError(f"dataset {job.dataset_id} was deleted")
        dataset = load_stored_dataset(settings, record)

        def stage(name: str) -> None:
            progress.stage = name

        result = service.rank(dataset, payload.method, payload.top_k, payload.all_class, progress, on_stage=stage)
        if payload.default_note:
            result.notes.insert(0, payload.default_note)
        answer = result.to_dict()
        if result.info.get("fallback") and (fit := _maybe_first_fit(store, settings)) is not None:
            answer["info"]["first_fit_job"] = fit
            answer["info"]["note"] = (f"{answer['info'].get('note', '')} The first fit from the shipped transfer "
                                      f"matrix is queued (job {fit}); rankings after it finishes use it.").strip()
        answer["dataset_id"] = record.id
        if ranking is not None:
            store.set_ranking_result(ranking.id, answer)
        store.succeed_job(job_id, {"ranking_id": ranking.id if ranking else None})


def run_add_source(job_id: str, store: JobStore, service: LibraryService, settings: Settings) -> None:
    job = store.start_job(job_id, settings.job_stale_after)
    if job is None:
        return
    payload = _payload(store, job_id, AddSourcePayload, job.params)
    if payload is None:
        return
    progress = JobProgress(store, job_id, stage="embedding source")
    with _outcome(store, job_id):
        record = store.get_dataset(job.dataset_id or "")
        if record is None:
            raise LibraryError(f"dataset {job.dataset_id} was deleted")
        name = payload.name
        existing = service.store.get_task(name)
        if existing is not None and existing.data_hash == record.content_hash:
            store.succeed_job(job_id, {"task_id": existing.id, "name": existing.name})  # redelivered
            return
        dataset = load_stored_dataset(settings, record)
        options = library_options(service.store)
        if options is None:
            raise LibraryError("the library is empty: build or import one first")
        encoder = service.encoder
        options = options.with_token_budget(encoder.token_budget(settings.max_tokens_per_batch))
        task, report = add_source(service.store, dataset, encoder, options, name=name,
                                  description=payload.description,
                                  provenance={"source": f"upload {record.id} ({record.filename})"},
                                  on_progress=progress)
        store.succeed_job(job_id, {"task_id": task.id, "name": task.name, "seconds": report.seconds})


def run_transfer(job_id: str, store: JobStore, service: LibraryService, settings: Settings) -> None:
    """One job of a transfer batch: the no-transfer baseline, or one source then the target, for every seed.

    The target's dev data is the batch's dev dataset, or a deterministic 20% of the target held out
    (stratified by label for classification), the same in every job of the batch. A source's
    fine-tuned encoder comes from the checkpoint cache (data_dir/checkpoints, keyed by source data
    hash, model and options), so batches sharing a source train it once.
    """
    import math
    import shutil
    from dataclasses import replace

    from embeddings.finetune import fine_tune
    from embeddings.splits import hold_out_dev
    from embeddings.transfer import source_checkpoint_path, source_encoder_state

    job = store.start_job(job_id, settings.job_stale_after)
    if job is None:
        return
    params = _payload(store, job_id, TransferPayload, job.params)
    if params is None:
        return
    progress = JobProgress(store, job_id, stage="loading data")
    with _outcome(store, job_id):
        batch = store.get_transfer_batch(params.batch_id or "")
        if batch is None:
            raise LibraryError(f"transfer batch {params.batch_id} was deleted")

        def stored(dataset_id: str, what: str) -> Dataset:
            record = store.get_dataset(dataset_id)
            if record is None:
                raise LibraryError(f"the {what} dataset {dataset_id} was deleted")
            return load_stored_dataset(settings, record)

        opts = TransferRunOptions.model_validate(batch.options)
        options = opts.transfer(params.seeds)
        target = stored(batch.target_dataset_id, "target")
        if batch.dev_dataset_id:
            train, dev = target, stored(batch.dev_dataset_id, "dev")
        else:  # hold out 20%: per label for classification, so every dev label is seen in training
            train, dev = hold_out_dev(target, options.data_seed)
        train = train.subsample(options.target_max_rows, options.data_seed)
        dev = dev.subsample(opts.dev_max_rows, options.data_seed)
        encoder = service.encoder
        if params.role == "combined":
            _run_multi_source(job_id, store, settings, batch.id, params, opts, train, dev, encoder, progress)
            return
        seeds = list(options.seeds)
        is_source = params.role == "source"
        phases, scale = len(seeds) + int(is_source), 1000

        def phase(index: int, stage: str) -> Any:
            progress.stage = stage

            def report(done: int, total: int) -> None:
                progress(index * scale + min(scale, round(scale * done / max(1, total))), phases * scale)
            return report

        phase(0, "loading data")(0, 1)
        initial_state, extra = None, {}
        if is_source:
            source_dev = None
            if params.source_dataset_id:
                source = stored(params.source_dataset_id, "source")
            else:  # an operator's task folder: trusted, so no upload row cap
                limits = LoadLimits(max_rows=10**9, max_text_chars=settings.max_text_chars)
                folder = Path(params.source_path or "")
                source = load_dataset(folder, limits=limits)
                if opts.practitioner_sources and (folder / "dev.jsonl").is_file():
                    source_dev = load_dataset(folder, split="dev", limits=limits)  # early stopping, as the matrix
            cache = settings.paths.checkpoints
            reused = source_checkpoint_path(source, encoder, options, cache, source_dev).is_file()
            on_source = phase(0, f"fine-tuning on {params.source_name}")
            initial_state, path = source_encoder_state(source, encoder, options, cache, on_progress=on_source,
                                                       dev=source_dev)
            extra = {"source_checkpoint": path.name, "checkpoint_reused": reused,
                     "source_rows": min(len(source), options.source_max_rows),
                     "source_task_type": source.task_type.value}
        run_dir = settings.paths.transfer_runs / job_id
        runs = []
        for i, seed in enumerate(seeds):
            on_target = phase(int(is_source) + i, f"target, seed {seed} ({i + 1}/{len(seeds)})")
            result, _ = fine_tune(train, dev, encoder, replace(options.target, seed=seed),
                                  initial_encoder_state=initial_state, checkpoint_dir=run_dir / f"seed-{seed}",
                                  on_progress=on_target)
            if not math.isfinite(result.score) or not all(math.isfinite(v) for v in result.metrics.values()):
                raise ValueError(f"seed {seed}: the dev {result.main_metric} is undefined (training diverged?)")
            runs.append({"seed": seed, **result.to_dict()})
        shutil.rmtree(run_dir, ignore_errors=True)
        scores = [float(r["score"]) for r in runs]
        from library.ranker import regime_id

        store.succeed_job(job_id, {
            "batch_id": batch.id, "role": params.role, "source": params.source,
            "main_metric": runs[0]["main_metric"], "scores": scores, "mean": statistics.fmean(scores),
            "std": statistics.stdev(scores) if len(scores) > 1 else 0.0, "train_rows": len(train),
            "dev_rows": len(dev), **extra,
            "regime": regime_id(encoder.weights_hash, asdict(options.source), options.source_max_rows),
            "runs": [{k: r[k] for k in ("seed", "score", "metrics", "best_step", "steps", "seconds")}
                     for r in runs]})
    if job.params.get("role") in ("baseline", "source"):
        try:
            record_transfer_results(store, service, settings, params.batch_id or "")
        except Exception as exc:  # noqa: BLE001 - the transfer succeeded; the ranker learns from it next time
            log.warning("transfer results of batch %s not recorded: %s", params.batch_id, exc)


def record_transfer_results(store: JobStore, service: LibraryService, settings: Settings, batch_id: str) -> int:
    """Every finished source job of the batch whose baseline has finished too becomes a row of the
    transfer-results table (once), with the pair's features as the learned ranker computes them; then a
    refit is queued when enough new results of the ranker's regime have come in. Returns rows added."""
    from library.ranker_store import RankerStore
    from library.transfers import UserBatch, user_runs

    batch = store.get_transfer_batch(batch_id)
    if batch is None or batch.method != "intermediate":
        return 0
    jobs = store.transfer_batch_jobs(batch)
    record = store.get_dataset(batch.target_dataset_id)
    if record is None:
        return 0
    rstore = RankerStore.for_engine(store.engine)
    by_job: dict[str, list[dict[str, Any]]] = {}
    for run in user_runs([UserBatch(batch, jobs, record.name)]):
        by_job.setdefault(run["job_id"], []).append(run)
    todo = [j for j in by_job if j not in rstore.recorded_jobs(list(by_job))]
    if not todo:
        return 0
    features: dict[str, dict[str, Any]] = {}
    facts: dict[str, Any] | None = None
    try:  # the pair's features, as a ranking by the learned method computes them (embeddings from the cache)
        dataset = load_stored_dataset(settings, record)
        ranking = service.rank(dataset, "learned", top_k=10**6, all_class=True)
        features = {s.name: {k: v for k, v in s.details.get("learned", {}).get("features", {}).items()
                             if not k.startswith("prior_")} for s in ranking.sources}
        facts = ranking.info.get("target_facts")
    except (LibraryError, DatasetError, ValueError) as exc:
        log.warning("no features for the transfer results of batch %s: %s", batch_id, exc)
    added = 0
    for job_id in todo:
        runs, result = by_job[job_id], (jobs[job_id].result or {})
        scores, bases = [r["score"] for r in runs], [r["baseline_score"] for r in runs]
        source = runs[0]["source"]
        row = rstore.add_result(
            job_id=job_id, batch_id=batch.id, source=source, target=record.name, target_hash=record.content_hash,
            regime=str(result.get("regime") or "unknown"), metric=runs[0].get("metric"),
            score=statistics.fmean(scores), baseline_score=statistics.fmean(bases),
            runs=[{"seed": r["seed"], "score": r["score"], "baseline_score": r["baseline_score"]} for r in runs],
            features=features.get(source), target_facts=facts, owner=batch.owner,
            info={k: result.get(k) for k in ("source_rows", "train_rows", "dev_rows", "checkpoint_reused",
                                             "source_checkpoint")}
            | {"seconds": [r.get("seconds") for r in runs], "steps": [r.get("steps") for r in runs],
               "batch_size": int((batch.options or {}).get("batch_size") or 16)})
        added += row is not None
    if added:
        from library.ranker import library_model_hash, service_regime

        model_hash = library_model_hash(service.store)
        _maybe_refit(store, rstore, settings, service_regime(model_hash) if model_hash else None)
    return added


def _maybe_refit(store: JobStore, rstore: Any, settings: Settings, regime: str | None) -> str | None:
    """Queue a `ranker_fit` job when `settings.ranker_refit_after` results of the ranker's regime came in
    since the last fit (and no fit is queued or running). Returns the job's id."""
    versions = rstore.versions()
    last = max((int(v.trained_on.get("results_max_id") or 0) for v in versions), default=0)
    if regime is None or rstore.count_results(regime, after_id=last) < settings.ranker_refit_after:
        return None
    return _queue_ranker_fit(store, settings, "new transfer results")


def _maybe_first_fit(store: JobStore, settings: Settings) -> str | None:
    """A fresh install ships a transfer matrix but no fitted ranker: the first `learned` ranking that falls
    back queues the first fit from it, once (a fit that ran and failed is not retried on every ranking;
    `taskrank ranker fit` says why). Returns the job's id."""
    from library.ranker_store import RankerStore

    if RankerStore.for_engine(store.engine).versions() or not settings.resolved_transfer_matrix.is_file():
        return None
    if store.list_jobs(kind="ranker_fit", limit=1):
        return None
    return _queue_ranker_fit(store, settings, "first fit from the shipped transfer matrix")


def _queue_ranker_fit(store: JobStore, settings: Settings, reason: str) -> str | None:
    if any(j.kind == "ranker_fit" for j in store.unfinished_jobs()):
        return None
    from worker.job_kinds import JOB_KINDS

    kind = JOB_KINDS["ranker_fit"]
    job = store.create_job(kind.name, params=RankerFitPayload(reason=reason).model_dump(), queue=kind.queue)
    try:
        from worker.celery_app import make_celery

        make_celery(settings).send_task(kind.task_name, args=[job.id], queue=kind.queue)
    except Exception as exc:  # noqa: BLE001 - the sweep dispatches queued jobs whose message is missing
        log.warning("ranker fit %s queued but not dispatched now: %s", job.id, exc)
    return job.id


def run_ranker_fit(job_id: str, store: JobStore, service: LibraryService, settings: Settings) -> None:
    """Refit the learned ranker on the matrix and every recorded result; activate it if not worse."""
    from library.ranker import fit_ranker
    from library.ranker_store import RankerStore

    job = store.start_job(job_id, settings.job_stale_after)
    if job is None:
        return
    if _payload(store, job_id, RankerFitPayload, job.params) is None:
        return
    progress = JobProgress(store, job_id, stage="gathering transfers")
    with _outcome(store, job_id):
        def stage(text: str) -> None:
            progress.stage = text
            progress(0, 1)

        report = fit_ranker(service, RankerStore.for_engine(store.engine), settings.resolved_transfer_matrix,
                            use_rows=settings.ranker_esm_features, progress=stage)
        store.succeed_job(job_id, {"version": report.version.id if report.version else None,
                                   "activated": report.activated, "candidate": report.candidate,
                                   "compared_with": report.compared_with, "notes": report.notes})


def _run_multi_source(job_id: str, store: JobStore, settings: Settings, batch_id: str, params: TransferPayload,
                      opts: TransferRunOptions, train: Dataset, dev: Dataset, encoder: Any,
                      progress: JobProgress) -> None:
    """The one job of a multi-source method: stage-1 adapters (cached in data_dir/checkpoints, like source
    encoders) or CA-MTL's joint training, then the target, for every seed (embeddings/multisource.py)."""
    import shutil

    from embeddings.multisource import multi_source_transfer

    progress.stage = "loading sources"
    sources = []
    for entry in params.sources:
        if entry.source_dataset_id:
            record = store.get_dataset(entry.source_dataset_id)
            if record is None:
                raise LibraryError(f"the source dataset {entry.source_dataset_id} was deleted")
            sources.append(load_stored_dataset(settings, record))
        else:  # an operator's task folder: trusted, so no upload row cap
            limits = LoadLimits(max_rows=10**9, max_text_chars=settings.max_text_chars)
            sources.append(load_dataset(Path(entry.source_path or ""), limits=limits))
    options = opts.multi_source(params.method or "", params.seeds)
    scores = [entry.score for entry in params.sources]
    run_dir = settings.paths.transfer_runs / job_id

    def on_stage(text: str) -> None:
        progress.stage = text

    report = multi_source_transfer(
        train, dev, sources, encoder, options, cache_dir=settings.paths.checkpoints,
        source_scores=[float(s) for s in scores] if all(s is not None for s in scores) else None,
        source_names=[entry.key for entry in params.sources], checkpoint_dir=run_dir,
        on_progress=progress, on_stage=on_stage)
    shutil.rmtree(run_dir, ignore_errors=True)
    if not all(math.isfinite(v) for r in report.runs for v in r["metrics"].values()):
        raise ValueError(f"a dev {report.main_metric} is undefined (training diverged?)")
    keep = ("seed", "score", "metrics", "best_step", "steps", "seconds", "weights", "single_adapter_score",
            "task_examples")
    singles = report.single_adapter_scores
    store.succeed_job(job_id, {
        "batch_id": batch_id, "role": "combined", "method": report.method, "source": None,
        "main_metric": report.main_metric, "scores": report.scores, "mean": report.mean, "std": report.std,
        "train_rows": len(train), "dev_rows": len(dev), "trained_parameters": report.trained_parameters,
        "method_parameters": report.method_parameters, "weight_kind": report.weight_kind,
        "source_weights": report.source_weights, "prior": report.prior, "single_adapter_scores": singles,
        "single_adapter_mean": statistics.fmean(singles) if singles else None, "seconds": report.seconds,
        "source_seconds": report.source_seconds, "adapters": report.adapters,
        "runs": [{k: r[k] for k in keep if k in r} for r in report.runs]})


def _payload(store: JobStore, job_id: str, model: type[P], params: dict[str, Any]) -> P | None:
    """The job's params as its payload; a malformed payload fails the job (never retried) with the field named."""
    try:
        return model.model_validate(params)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "params"
        store.fail_job(job_id, f"invalid {model.__name__} for job {job_id}: {where}: {first['msg']}")
        return None


class _outcome:
    """Bad data and library errors fail the job with their message; cancellation marks it cancelled.

    Anything else propagates (after the job is marked failed) so Celery records the failure too;
    transient infrastructure errors propagate untouched so the task is retried.
    """

    def __init__(self, store: JobStore, job_id: str) -> None:
        self.store, self.job_id = store, job_id

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, _tb: Any) -> bool:
        if exc is None:
            return False
        if isinstance(exc, JobCancelled):
            self.store.mark_cancelled(self.job_id)
            return True
        if isinstance(exc, DatasetError | LibraryError | ValueError):
            self.store.fail_job(self.job_id, str(exc))
            return True
        if is_transient(exc):
            return False
        log.exception("job %s failed", self.job_id)
        self.store.fail_job(self.job_id, f"internal error: {type(exc).__name__}: {exc}")
        return False


def is_transient(exc: BaseException) -> bool:
    """Database or broker unavailable: worth a retry with backoff."""
    from sqlalchemy.exc import DBAPIError, OperationalError

    if isinstance(exc, OperationalError):
        return True
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, ConnectionError | TimeoutError)
