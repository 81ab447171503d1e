"""The job-kind registry: for each kind, its payload, its handler and its queue, defined once.

Routes enqueue through it (`JOB_KINDS[kind].queue`, `.payload`), the worker registers one Celery task
per entry (`worker.tasks`), the sweep re-dispatches lost jobs by it, and the tests run queued jobs
with `JOB_KINDS[job.kind].handler`. Ranking-type work (`embed`) and training (`train`) have separate
queues so a ranking never waits behind a fine-tuning.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pydantic import BaseModel

from library.jobs import JobStore
from library.service import LibraryService
from library.settings import Settings
from worker import runner
from worker.payloads import AddSourcePayload, RankerFitPayload, RankPayload, TransferPayload

EMBED_QUEUE = "embed"
TRAIN_QUEUE = "train"
QUEUES = (EMBED_QUEUE, TRAIN_QUEUE)

Handler = Callable[[str, JobStore, LibraryService, Settings], None]


@dataclass(frozen=True)
class JobKind:
    name: str
    payload: type[BaseModel]
    handler: Handler
    queue: str

    @property
    def task_name(self) -> str:
        """The Celery task name: `taskrank.<queue>.<kind>` (routes messages by queue)."""
        return f"taskrank.{self.queue}.{self.name}"


JOB_KINDS: dict[str, JobKind] = {k.name: k for k in (
    JobKind("rank", RankPayload, runner.run_rank, EMBED_QUEUE),
    JobKind("add_source", AddSourcePayload, runner.run_add_source, EMBED_QUEUE),
    JobKind("transfer", TransferPayload, runner.run_transfer, TRAIN_QUEUE),
    JobKind("ranker_fit", RankerFitPayload, runner.run_ranker_fit, TRAIN_QUEUE),
)}
TASK_NAMES = {kind.name: kind.task_name for kind in JOB_KINDS.values()}
