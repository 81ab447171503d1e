"""GET /health (database, broker, workers) and GET /metrics (Prometheus text format)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Response

from app.deps import Services, get_services
from app.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/health", response_model=Health, responses={503: {"model": Health}})
def health(response: Response, services: Annotated[Services, Depends(get_services)]) -> Health:
    """200 when the database and broker answer; 503 (with what is wrong) otherwise."""
    database, tasks, version, workers = "ok", None, None, 0
    try:
        services.jobs.ping()
        workers = len(services.jobs.live_workers())
        tasks = len(services.library.store.list_tasks())
        version = services.library.store.version()
    except Exception as exc:  # noqa: BLE001 - reported, not raised: health must answer
        database = f"unavailable: {type(exc).__name__}"
    broker = services.broker_status()
    ok = database == "ok" and broker == "ok"
    response.status_code = 200 if ok else 503
    return Health(status="ok" if ok else "degraded", database=database, broker=broker, workers=workers,
                  library_tasks=tasks, library_version=version)


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
def metrics(services: Annotated[Services, Depends(get_services)]) -> Response:
    lines = ["# HELP taskrank_jobs Jobs by state.", "# TYPE taskrank_jobs gauge"]
    for state, count in sorted(services.jobs.count_by_state().items()):
        lines.append(f'taskrank_jobs{{state="{state}"}} {count}')
    lines += ["# HELP taskrank_queue_depth Jobs waiting per queue.", "# TYPE taskrank_queue_depth gauge"]
    for queue, count in sorted(services.jobs.queue_depths().items()):
        lines.append(f'taskrank_queue_depth{{queue="{queue}"}} {count}')
    lines += ["# HELP taskrank_job_duration_seconds Run time of succeeded jobs (last 1000).",
              "# TYPE taskrank_job_duration_seconds summary"]
    by_kind: dict[str, list[float]] = {}
    for kind, seconds in services.jobs.finished_durations():
        by_kind.setdefault(kind, []).append(seconds)
    for kind, values in sorted(by_kind.items()):
        values.sort()
        for q in (0.5, 0.9, 0.99):
            value = values[min(len(values) - 1, int(q * len(values)))]
            lines.append(f'taskrank_job_duration_seconds{{kind="{kind}",quantile="{q}"}} {value:.6f}')
        lines.append(f'taskrank_job_duration_seconds_sum{{kind="{kind}"}} {sum(values):.6f}')
        lines.append(f'taskrank_job_duration_seconds_count{{kind="{kind}"}} {len(values)}')
    lines += ["# HELP taskrank_workers Workers seen in the last 30 s.", "# TYPE taskrank_workers gauge",
              f"taskrank_workers {len(services.jobs.live_workers())}"]
    return Response("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")
