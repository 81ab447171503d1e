"""POST/GET/DELETE /datasets: uploads validated by the core's loader and stored content-addressed."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, HTTPException, Request, Response, status
from pydantic import ValidationError

from app.deps import JobsDep, Reader, SettingsDep, Writer, visible_dataset
from app.schemas import DatasetCheck, DatasetPublic, DatasetRows, Problem
from app.uploads import StoredUpload, UploadTooLarge, display_name, error_detail, store_file, store_rows
from embeddings.data import DatasetError
from library.jobs import StoredDataset
from worker.runner import dataset_path

router = APIRouter(prefix="/datasets", tags=["datasets"])

def _rows_schema() -> dict[str, Any]:
    """DatasetRows as an OpenAPI schema: its refs point at components (TaskType is one), not at `$defs`
    (ReDoc refuses a document with a `#/$defs/...` ref)."""
    schema = DatasetRows.model_json_schema(ref_template="#/components/schemas/{model}")
    schema.pop("$defs", None)
    return schema


_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": {
                "type": "object", "required": ["file"],
                "properties": {
                    "file": {"type": "string", "format": "binary"},
                    "name": {"type": "string", "maxLength": 200},
                    "task_type": {"type": "string", "enum": ["classification", "regression",
                                                             "question_answering", "sequence_labeling"]},
                    "column_map": {"type": "string", "description": "JSON object or text=col,label=col"},
                }}},
            "application/json": {"schema": _rows_schema()},
        },
    }
}


def public(record: StoredDataset) -> DatasetPublic:
    return DatasetPublic.model_validate(record, from_attributes=True)


def _column_map(text: str | None) -> dict[str, str] | None:
    if not text or not text.strip():
        return None
    text = text.strip()
    if text.startswith("{"):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise _bad(f"column_map is not valid JSON: {exc.msg}", field="column_map") from None
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise _bad("column_map must map field names to column names", field="column_map")
        return value
    mapping = {}
    for part in text.split(","):
        key, sep, column = part.partition("=")
        if not sep or not key.strip() or not column.strip():
            raise _bad(f"column_map expects field=column pairs, got {part!r}", field="column_map")
        mapping[key.strip()] = column.strip()
    return mapping


def _bad(message: str, **where: Any) -> HTTPException:
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, {"message": message, **where})


@router.post("", status_code=201, response_model=DatasetPublic, openapi_extra=_UPLOAD_BODY,
             responses={200: {"model": DatasetPublic, "description": "The same content, name and owner were "
                                                                    "uploaded before: that record"},
                        413: {"model": Problem}, 415: {"model": Problem},
                        422: {"model": Problem}})
async def upload_dataset(request: Request, response: Response, settings: SettingsDep, jobs: JobsDep,
                         owner: Writer) -> DatasetPublic:
    """Upload a file (multipart field `file`) or post `{"rows": [...]}`; validated before anything is kept.

    Uploading the same content with the same name (and owner) again answers 200 with the existing record."""
    stored, filename, load_options = await _read_upload(request, settings, keep=True)
    dataset = stored.dataset
    try:
        existing = jobs.find_dataset(file_sha256=stored.file_sha256, content_hash=dataset.content_hash,
                                     name=dataset.name[:200], task_type=dataset.task_type.value, owner=owner)
        if existing is not None:
            response.status_code = status.HTTP_200_OK
            return public(existing)
        return public(_record(jobs, stored, filename, owner, load_options))
    except Exception:
        stored.discard()  # the database refused the record: keep no file without one
        raise


@router.post("/validate", response_model=DatasetCheck, openapi_extra=_UPLOAD_BODY,
             responses={413: {"model": Problem}, 415: {"model": Problem},
                        422: {"model": Problem}})
async def validate_dataset(request: Request, settings: SettingsDep, owner: Writer) -> DatasetCheck:
    """What `POST /datasets` would store, described, with nothing stored (the upload form checks a chosen
    file with it and uploads only when the ranking starts)."""
    stored, filename, _ = await _read_upload(request, settings, keep=False)
    return DatasetCheck(**_summary(stored, filename))


async def _read_upload(request: Request, settings: SettingsDep,
                       keep: bool) -> tuple[StoredUpload, str | None, dict[str, Any]]:
    """Read and validate the body (multipart file or JSON rows); keep=False leaves nothing on disk."""
    from starlette.concurrency import run_in_threadpool

    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    try:
        if content_type == "multipart/form-data":
            form = await request.form(max_files=1, max_fields=10)
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                raise _bad("multipart upload needs a file field named 'file'", field="file")
            name = _text(form.get("name"))
            task_type = _text(form.get("task_type"))
            column_map = _column_map(_text(form.get("column_map")))
            filename = upload.filename
            stored = await run_in_threadpool(store_file, upload.file, filename, settings, name=name,
                                             task_type=task_type, column_map=column_map, keep=keep)
            return stored, filename, {"column_map": column_map} if column_map else {}
        if content_type == "application/json":
            try:
                body = DatasetRows.model_validate_json(await request.body())
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(p) for p in first.get("loc", ()))
                raise _bad(f"{where}: {first.get('msg')}" if where else str(first.get("msg")),
                           field=where or None) from None
            stored = await run_in_threadpool(store_rows, body.rows, settings, name=body.name,
                                             task_type=body.task_type, column_map=body.column_map, keep=keep)
            return stored, f"{body.name or 'rows'}.jsonl", {}  # stored rows are already in the canonical schema
        raise HTTPException(status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
                            {"message": "send multipart/form-data with a 'file', or application/json rows"})
    except DatasetError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, error_detail(exc)) from None
    except UploadTooLarge as exc:
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, {"message": str(exc)}) from None


def _text(value: Any) -> str | None:
    return value.strip() or None if isinstance(value, str) else None


def _summary(stored: StoredUpload, filename: str | None) -> dict[str, Any]:
    dataset = stored.dataset
    description = dataset.describe()
    return {"name": dataset.name[:200], "filename": display_name(filename), "task_type": dataset.task_type.value,
            "rows": len(dataset), "labels": description.get("labels") or {}, "content_hash": dataset.content_hash,
            "size_bytes": stored.size_bytes, "description": description}


def _record(jobs: JobsDep, stored: StoredUpload, filename: str | None, owner: str | None,
            load_options: dict[str, Any]) -> StoredDataset:
    return jobs.add_dataset(**_summary(stored, filename), file_sha256=stored.file_sha256, file_ext=stored.file_ext,
                            load_options=load_options, owner=owner)


@router.get("", response_model=list[DatasetPublic])
def list_datasets(jobs: JobsDep, settings: SettingsDep, owner: Reader, limit: int = 100) -> list[DatasetPublic]:
    records = jobs.list_datasets(owner=owner if settings.per_key_ownership else None, limit=max(1, min(limit, 1000)))
    return [public(r) for r in records]


@router.get("/{dataset_id}", response_model=DatasetPublic, responses={404: {"model": Problem}})
def get_dataset(dataset_id: str, jobs: JobsDep, settings: SettingsDep, owner: Reader) -> DatasetPublic:
    return public(visible_dataset(jobs, settings, owner, dataset_id))


@router.delete("/{dataset_id}", status_code=204, responses={404: {"model": Problem}})
def delete_dataset(dataset_id: str, jobs: JobsDep, settings: SettingsDep, owner: Writer) -> Response:
    record = visible_dataset(jobs, settings, owner, dataset_id)
    jobs.delete_dataset(record.id)
    if jobs.datasets_with_file(record.file_sha256) == 0:  # content-addressed: other records may share it
        dataset_path(settings, record).unlink(missing_ok=True)
    return Response(status_code=204)
