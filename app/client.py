"""A small client for notebooks: upload data, wait for the job with a progress bar, get a DataFrame.

    from app.client import TaskrankClient
    client = TaskrankClient("http://127.0.0.1:8000")
    ranking = client.rank(df, top_k=5)                         # method: the service's default (GET /ranker)      # DataFrame, list of dicts, path, or HF Dataset
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx


class TaskrankError(RuntimeError):
    """An error answered by the service, with the fields of its RFC 9457 problem details: `status`, `type`,
    `title`, `detail` (the message), `file`, `line`, `column` and `field` where bad data is wrong, and
    `errors` (every issue) for a request that fails its schema. `problem` is the whole answer."""

    def __init__(self, status: int, problem: Mapping[str, Any] | str | None) -> None:
        body: dict[str, Any] = dict(problem) if isinstance(problem, Mapping) else {"detail": problem or ""}
        self.problem = body
        self.status = status
        self.type: str = body.get("type", "about:blank")
        self.title: str | None = body.get("title")
        self.detail: str = str(body.get("detail") or body.get("title") or f"HTTP {status}")
        self.file: str | None = body.get("file")
        self.line: int | None = body.get("line")
        self.column: int | None = body.get("column")
        self.field: str | None = body.get("field")
        self.errors: list[dict[str, Any]] | None = body.get("errors")
        where = [f"file {self.file}" if self.file else "", f"line {self.line}" if self.line else "",
                 f"column {self.column}" if self.column else "", f"field {self.field!r}" if self.field else ""]
        where_text = ", ".join(w for w in where if w)
        super().__init__(f"HTTP {status}: {self.detail}" + (f" ({where_text})" if where_text else ""))


class TaskrankClient:
    def __init__(self, url: str = "http://127.0.0.1:8000", api_key: str | None = None, timeout: float = 60.0):
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> TaskrankClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check(self, response: httpx.Response) -> Any:
        if response.status_code >= 400:
            try:
                problem = response.json()
            except ValueError:
                problem = response.text
            raise TaskrankError(response.status_code, problem if isinstance(problem, dict) else str(problem))
        return response.json() if response.content else None

    # datasets ---------------------------------------------------------------------------------
    def upload(self, data: Any, *, name: str | None = None, task_type: str | None = None,
               column_map: Mapping[str, str] | None = None) -> dict[str, Any]:
        """Upload a pandas DataFrame, a list of dicts, a file path, or a Hugging Face `datasets.Dataset`."""
        form = {k: v for k, v in {"name": name, "task_type": task_type,
                                   "column_map": json.dumps(dict(column_map)) if column_map else None}.items() if v}
        if isinstance(data, str | Path):
            path = Path(data)
            with open(path, "rb") as fh:
                return self._check(self.http.post("/datasets", files={"file": (path.name, fh)}, data=form))
        rows = _rows(data)
        if hasattr(data, "to_csv") and not _has_nested(rows):  # DataFrame: send as CSV, the cheapest form
            content = data.to_csv(index=False).encode()
            name = name or default_name(data, content)
            form["name"] = name
            return self._check(self.http.post("/datasets", files={"file": (f"{name}.csv", io.BytesIO(content))},
                                              data=form))
        name = name or default_name(data, json.dumps(rows, sort_keys=True, default=str).encode())
        body: dict[str, Any] = {"rows": rows, "name": name, "task_type": task_type}
        if column_map:
            body["column_map"] = dict(column_map)
        return self._check(self.http.post("/datasets", json={k: v for k, v in body.items() if v is not None}))

    def datasets(self) -> list[dict[str, Any]]:
        return self._check(self.http.get("/datasets"))

    def delete_dataset(self, dataset_id: str) -> None:
        self._check(self.http.delete(f"/datasets/{dataset_id}"))

    # jobs and rankings --------------------------------------------------------------------------
    def job(self, job_id: str) -> dict[str, Any]:
        return self._check(self.http.get(f"/jobs/{job_id}"))

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._check(self.http.delete(f"/jobs/{job_id}"))

    def wait(self, job_id: str, *, poll: float = 0.5, timeout: float | None = None,
             progress: bool = True) -> dict[str, Any]:
        """Poll the job until it finishes; a tqdm bar shows percent and the service's ETA."""
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=100, unit="%", bar_format="{l_bar}{bar}| {n:.0f}% {postfix}")
        started = time.monotonic()
        try:
            while True:
                job = self.job(job_id)
                if bar is not None:
                    bar.n = job["progress"]
                    eta = job.get("eta_seconds")
                    bar.set_postfix_str(f"{job['stage']}" + (f", ETA {eta:.0f}s" if eta else ""))
                    bar.refresh()
                if job["state"] in ("succeeded", "failed", "cancelled"):
                    if job["state"] != "succeeded":
                        raise TaskrankError(200, {"title": f"Job {job['state']}",
                                                  "detail": f"job {job['state']}: {job.get('error')}"})
                    return job
                if timeout is not None and time.monotonic() - started > timeout:
                    raise TimeoutError(f"job {job_id} still {job['state']} after {timeout} s")
                time.sleep(poll)
        finally:
            if bar is not None:
                bar.close()

    def methods(self) -> list[str] | None:
        """The service's ranking methods (the `RankingCreate.method` enum of its OpenAPI document), asked once;
        None when the document does not say."""
        if not hasattr(self, "_methods"):
            try:
                schema = self._check(self.http.get("/openapi.json"))
                field = schema["components"]["schemas"]["RankingCreate"]["properties"]["method"]
                # optional (the service's default when omitted): the enum sits in one branch of anyOf
                enum = field.get("enum") or next((b["enum"] for b in field.get("anyOf", []) if "enum" in b), None)
            except (TaskrankError, KeyError, TypeError, ValueError):
                enum = None
            self._methods: list[str] | None = list(enum) if enum else None
        return self._methods

    def check_method(self, method: str | None) -> None:
        """Refuse a method the service does not have, before anything is uploaded (ValueError)."""
        known = self.methods() if method is not None else None
        if known is not None and method not in known:
            raise ValueError(f"unknown ranking method {method!r}; the service has {', '.join(known)}")

    def request_ranking(self, dataset_id: str, method: str | None = None, top_k: int = 10,
                        all_class: bool = False) -> dict[str, Any]:
        """`method`: a ranking method of the service (`methods()` lists them); None: its default."""
        self.check_method(method)
        body = {"dataset_id": dataset_id, "top_k": top_k, "all_class": all_class}
        if method is not None:
            body["method"] = method
        return self._check(self.http.post("/rankings", json=body))

    def ranking(self, ranking_id: str) -> dict[str, Any]:
        return self._check(self.http.get(f"/rankings/{ranking_id}"))

    def rank(self, data: Any, method: str | None = None, top_k: int = 10, all_class: bool = False,
             *, timeout: float | None = None, progress: bool = True, **upload: Any):  # -> pandas.DataFrame
        """Upload (unless given a dataset id), rank, wait, and return the ranked sources as a DataFrame.

        A string is a file path when such a file exists; one that looks like a path (a data file suffix such
        as .csv, or a path separator) but does not exist raises FileNotFoundError; any other string is taken
        as the id of an uploaded dataset. An unknown `method` raises ValueError before anything is uploaded."""
        self.check_method(method)
        if isinstance(data, str | Path) and not Path(data).exists():
            if isinstance(data, Path) or looks_like_path(data):
                raise FileNotFoundError(f"{str(data)!r} does not exist (a file was expected: give an existing "
                                        "path, or a dataset id)")
            dataset_id = str(data)
        else:
            dataset_id = self.upload(data, **upload)["id"]
        submitted = self.request_ranking(dataset_id, method, top_k, all_class)
        if submitted["state"] != "succeeded":
            self.wait(submitted["job_id"], timeout=timeout, progress=progress)
        return ranking_frame(self.ranking(submitted["id"]))

    def library(self) -> list[dict[str, Any]]:
        return self._check(self.http.get("/library/tasks"))

    def health(self) -> dict[str, Any]:
        return self.http.get("/health").json()


def ranking_frame(ranking: Mapping[str, Any]):  # -> pandas.DataFrame
    import pandas as pd

    rows = []
    estimates = (ranking.get("info") or {}).get("estimates") or {}
    for source in ranking.get("sources") or []:
        row = {k: source[k] for k in ("rank", "name", "task_type", "score", "num_train")}
        learned = (source.get("details") or {}).get("learned") or {}
        if "expected_gain" in learned:  # the learned method: expected gain, its interval, P(helps), why, cost
            estimate = estimates.get(source["name"]) or {}
            row |= {"expected_gain": learned["expected_gain"], "low": learned["low"], "high": learned["high"],
                    "p_helps": learned["p_helps"], "unlikely_to_help": learned.get("unlikely_to_help"),
                    "why": "; ".join(r["text"] for r in learned.get("reasons") or []),
                    "minutes": estimate.get("minutes"), "gain_per_minute": estimate.get("gain_per_minute"),
                    "ranker_version": learned.get("ranker_version")}
        else:
            for part, info in (source.get("details") or {}).items():
                row[f"rank_{part}"] = info.get("rank")
        rows.append(row)
    return pd.DataFrame(rows)


DATA_SUFFIXES = (".csv", ".tsv", ".tab", ".jsonl", ".ndjson", ".json", ".conll", ".iob", ".bio", ".txt")


def looks_like_path(text: str) -> bool:
    """A data file's suffix or a path separator: meant as a file, never a dataset id (ids are hex)."""
    return text.lower().endswith(DATA_SUFFIXES) or "/" in text or "\\" in text or text.startswith("~")


def default_name(data: Any, content: bytes) -> str:
    """What an unnamed upload is, its size and a content hash: `dataframe-200rows-1a2b3c4d`. The same data
    gets the same name, so uploading it again finds the record it made (the service answers 200)."""
    import hashlib

    kind = "dataframe" if hasattr(data, "to_csv") else "dataset" if hasattr(data, "features") else "rows"
    return f"{kind}-{len(data)}rows-{hashlib.sha256(content).hexdigest()[:8]}"


def _rows(data: Any) -> list[dict[str, Any]]:
    if hasattr(data, "to_dict") and hasattr(data, "columns"):  # pandas DataFrame
        return data.to_dict(orient="records")
    if hasattr(data, "to_list") and hasattr(data, "features"):  # datasets.Dataset
        return list(data.to_list())
    if isinstance(data, Sequence) and all(isinstance(r, Mapping) for r in data):
        return [dict(r) for r in data]
    raise TypeError("upload takes a pandas DataFrame, a list of dicts, a file path or a datasets.Dataset")


def _has_nested(rows: list[dict[str, Any]]) -> bool:
    return any(isinstance(v, list | dict) for row in rows[:50] for v in row.values())
