"""A whole ranking request through the running service, per method: esm_logme beside textemb, semb, taskemb.

`bench/esm_logme.py` times the scoring call and the in-process pipeline; this times what a user waits
for: `taskrank serve` (uvicorn + one Celery worker on the embedded SQLite broker, the shipped default
library with its ESMs, imported on start) on a fresh data directory, then per request

1. upload a fresh 1,000-row sst2 slice (POST /datasets; timed apart),
2. POST /rankings {"method": m} and poll GET /jobs/{id} every 50 ms until it has succeeded,
3. GET /rankings/{id} (the result).

Every request uses its own slice (overlapping windows of sst2's 10,000 rows: distinct datasets), so
every target is embedded from a cold cache. The methods take
turns within each round (the order rotates), so drift in the machine's load spreads over all of them.
The baseline is textemb (the service's default method), measured in the same run: each method's
median request time is reported as a ratio to it. One warm-up ranking (model load in the worker) is
left out. Machine facts, load before and after and the other busy processes are recorded, since the
cores may be shared.

    .venv/bin/python bench/ranking_request.py [--rounds 3] [--rows 1000] [--torch-threads 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.api_load import (  # noqa: E402
    SHARED_DATA,
    busy_processes,
    free_port,
    git_revision,
    load_average,
    machine_info,
    serve,
    service_env,
    sst2_rows,
    upload,
    wait_healthy,
)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "ranking_request_cpu.json"
METHODS = ("textemb", "semb", "taskemb", "esm_logme")
BASELINE = "textemb"


def log(message: str) -> None:
    print(f"[ranking_request {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def distinct_slices(rows: list[dict[str, str]], count: int, size: int) -> list[list[dict[str, str]]]:
    """`count` windows of `size` rows at evenly spaced starts: overlapping when the split is short, but each
    a different dataset (content hash), so each ranking embeds its target from a cold cache."""
    if size > len(rows) or count > len(rows) - size + 1:
        raise SystemExit(f"sst2 has too few rows ({len(rows)}) for {count} distinct slices of {size}")
    step = (len(rows) - size) // max(count - 1, 1)
    return [rows[i * step:i * step + size] for i in range(count)]


def one_request(client: httpx.Client, url: str, dataset_id: str, method: str, timeout: float) -> dict[str, Any]:
    """POST /rankings, poll the job until done, GET the ranking: wall seconds and the job's own run time."""
    started = time.perf_counter()
    response = client.post(f"{url}/rankings", json={"dataset_id": dataset_id, "method": method, "top_k": 5},
                           timeout=60)
    if response.status_code != 202:
        raise SystemExit(f"{method}: POST /rankings {response.status_code} {response.text[:500]}")
    body = response.json()
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"{url}/jobs/{body['job_id']}", timeout=30).json()
        if job["state"] in ("succeeded", "failed", "cancelled"):
            break
        if time.monotonic() > deadline:
            raise SystemExit(f"{method}: job not finished after {timeout:.0f} s: {job}")
        time.sleep(0.05)
    ranking = client.get(f"{url}/rankings/{body['id']}", timeout=30).json()
    total = time.perf_counter() - started
    if job["state"] != "succeeded" or ranking.get("state") != "succeeded":
        raise SystemExit(f"{method}: job {job['state']}: {job.get('error') or ranking.get('error')}")
    return {"seconds": round(total, 3), "job_seconds": job.get("duration_seconds"),
            "top": [s["name"] for s in ranking.get("sources") or []][:3]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="requests per method (default 3)")
    parser.add_argument("--rows", type=int, default=1000, help="rows per uploaded target (default 1000)")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--torch-threads", type=int, default=1, help="TASKRANK_TORCH_THREADS of the service")
    parser.add_argument("--data", type=Path, default=SHARED_DATA)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds one ranking may take")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if BASELINE not in methods:
        methods.insert(0, BASELINE)

    before = {"load_average": load_average(), "busy_processes": busy_processes()}
    rows = sst2_rows(args.data)
    slices = distinct_slices(rows, len(methods) * args.rounds + 1, args.rows)
    results: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    uploads: list[float] = []
    with tempfile.TemporaryDirectory(prefix="taskrank-ranking-request-") as tmp:
        data_dir = Path(tmp)
        env = service_env(data_dir, args.torch_threads)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        with serve(env, port, data_dir / "serve.log", ROOT) as proc, httpx.Client() as client:
            t = time.monotonic()
            health = wait_healthy(url, proc, data_dir / "serve.log", timeout=600)
            log(f"healthy after {time.monotonic() - t:.1f} s: {health}")
            warm = upload(client, url, "warm-up", slices[0][:50])
            log(f"warm-up ranking: {one_request(client, url, warm['id'], BASELINE, args.timeout)}")
            turn = 1
            for round_ in range(args.rounds):
                order = methods[round_ % len(methods):] + methods[:round_ % len(methods)]
                for method in order:
                    t = time.perf_counter()
                    dataset = upload(client, url, f"sst2-{turn:03d}", slices[turn])
                    uploads.append(time.perf_counter() - t)
                    turn += 1
                    done = one_request(client, url, dataset["id"], method, args.timeout)
                    results[method].append(done)
                    log(f"round {round_ + 1} {method}: {done}")
    base = statistics.median(r["seconds"] for r in results[BASELINE])
    summary = {}
    for method, runs in results.items():
        median = statistics.median(r["seconds"] for r in runs)
        jobs = [r["job_seconds"] for r in runs if r["job_seconds"] is not None]
        summary[method] = {"median_s": round(median, 2), "min_s": round(min(r["seconds"] for r in runs), 2),
                           "median_job_s": round(statistics.median(jobs), 2) if jobs else None,
                           "ratio_to_textemb": round(median / base, 2), "runs": runs}
    result = {
        "benchmark": "bench/ranking_request.py", "date": datetime.now(UTC).isoformat(timespec="seconds"),
        **git_revision(), "machine": machine_info(),
        "mode": "taskrank serve (uvicorn, 1 process + 1 Celery worker, embedded SQLite broker), fresh data "
                "directory with the shipped default library; one request at a time",
        "target": f"sst2 windows of {args.rows} rows (a distinct one per request: cold target cache)",
        "torch_threads": args.torch_threads, "baseline": BASELINE,
        "upload_median_s": round(statistics.median(uploads), 2), "methods": summary,
        "load_before": before, "load_after": {"load_average": load_average(), "busy_processes": busy_processes()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({m: {k: v for k, v in s.items() if k != "runs"} for m, s in summary.items()}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
