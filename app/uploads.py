"""Store uploads content-addressed: stream to a temp file with a size cap, validate, then rename.

The client's filename is only ever shown; its extension (from a fixed list) picks the parser.
Nothing is kept unless the loader accepts the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from embeddings.data import Dataset, DatasetError, LoadLimits, dataset_from_rows, load_dataset
from library.settings import Settings

ALLOWED_EXTENSIONS = ("jsonl", "ndjson", "json", "csv", "tsv", "tab", "conll", "iob", "bio", "txt")
_CHUNK = 1 << 20


class UploadTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"upload is larger than the {limit} byte limit (TASKRANK_MAX_UPLOAD_BYTES)")


@dataclass
class StoredUpload:
    dataset: Dataset
    file_sha256: str
    file_ext: str
    size_bytes: int
    path: Path
    created: bool  # False when identical content was already stored

    def discard(self) -> None:
        """Undo the store (a later step failed): remove the file unless it was there before."""
        if self.created:
            self.path.unlink(missing_ok=True)


def safe_extension(filename: str | None) -> str:
    suffix = Path((filename or "").replace("\\", "/")).suffix.lower().lstrip(".")
    return suffix if suffix in ALLOWED_EXTENSIONS else "dat"


def display_name(filename: str | None) -> str:
    base = Path((filename or "upload").replace("\\", "/")).name or "upload"
    return "".join(ch for ch in base if ch.isprintable())[:200] or "upload"


def _limits(settings: Settings) -> LoadLimits:
    return LoadLimits(max_rows=settings.max_rows, max_text_chars=settings.max_text_chars)


def _store_dir(settings: Settings) -> Path:
    path = settings.paths.datasets
    path.mkdir(parents=True, exist_ok=True)
    return path


def store_file(stream: IO[bytes], filename: str | None, settings: Settings, *, name: str | None,
               task_type: str | None, column_map: dict[str, str] | None, keep: bool = True) -> StoredUpload:
    """Copy with a running size check and hash, validate with the one loader, then publish by rename
    (`keep=False`: validate only; the temporary copy is removed and nothing is published)."""
    ext = safe_extension(filename)
    directory = _store_dir(settings)
    digest = hashlib.sha256()
    size = 0
    fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=".upload-", suffix=f".{ext}")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            while chunk := stream.read(_CHUNK):
                size += len(chunk)
                if size > settings.max_upload_bytes:
                    raise UploadTooLarge(settings.max_upload_bytes)
                digest.update(chunk)
                out.write(chunk)
        shown = display_name(filename)
        try:
            dataset = load_dataset(tmp, task_type=task_type, column_map=column_map, limits=_limits(settings),
                                   name=name or Path(shown).stem)
        except DatasetError as exc:  # name the client's file, not our temporary one
            raise DatasetError(exc.message, file=shown, line=exc.line, column=exc.column, field=exc.field) from None
        sha = digest.hexdigest()
        final = directory / f"{sha}.{ext}"
        created = not final.exists()
        if not keep:
            return StoredUpload(dataset, sha, ext, size, final, created=False)
        os.replace(tmp, final)
        return StoredUpload(dataset, sha, ext, size, final, created)
    finally:
        tmp.unlink(missing_ok=True)


def store_rows(rows: list[dict[str, Any]], settings: Settings, *, name: str | None, task_type: str | None,
               column_map: dict[str, str] | None, keep: bool = True) -> StoredUpload:
    dataset = dataset_from_rows(rows, name=name or "rows", task_type=task_type, column_map=column_map,
                                limits=_limits(settings))
    body = "".join(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n" for row in dataset.to_rows())
    data = body.encode()
    if len(data) > settings.max_upload_bytes:
        raise UploadTooLarge(settings.max_upload_bytes)
    sha = hashlib.sha256(data).hexdigest()
    final = _store_dir(settings) / f"{sha}.jsonl"
    created = keep and not final.exists()
    if created:
        fd, tmp_name = tempfile.mkstemp(dir=final.parent, prefix=".upload-", suffix=".jsonl")
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp_name, final)
    return StoredUpload(dataset, sha, "jsonl", len(data), final, created)


def error_detail(exc: DatasetError) -> dict[str, Any]:
    return {"message": str(exc), "file": exc.file, "line": exc.line, "column": exc.column, "field": exc.field}
