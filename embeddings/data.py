"""The one dataset loader of taskrank: every accepted file format becomes a validated `Dataset`.

Formats (see `load_dataset`): a shared/data task folder, JSON Lines, JSON (SQuAD v1.1/v2.0 or a
list of rows), CSV/TSV with a header, and CoNLL-style token/tag columns. Every problem with the
input is raised as a `DatasetError` that says where it is (file, line, column, field), so a person
can fix the file; nothing else (UnicodeDecodeError, KeyError, JSONDecodeError, ...) escapes.

CSV/TSV column rule: the text column is the first of `text`, `sentence1`, `premise`, `question`,
`sentence` that the header has; the pair column is the first of `text_pair`, `sentence2`,
`hypothesis`, `passage`, or else `sentence` when the text column is `question` (QNLI: the question
is the text, the sentence is the pair); the label column is the first of `label`, `labels`, `score`,
`gold_label`. Names match case-insensitively; `column_map` overrides any of them. In CSV an empty
pair cell means "no pair". TSV is read like GLUE's files: tab-separated, no quoting.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import math
import random
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import Any, Literal, cast, overload

import numpy as np

__all__ = [
    "DatasetError",
    "Dataset",
    "Example",
    "LoadLimits",
    "QAExample",
    "TaggingExample",
    "TaskType",
    "TextExample",
    "dataset_from_rows",
    "infer_task_type",
    "load_dataset",
]

HASH_PREFIX = "taskrank-data-v1\n"
# A long CSV field is judged against LoadLimits.max_text_chars (a clear message), not csv's 128 KiB cap.
csv.field_size_limit(2**31 - 1)

SUPPORTED_FORMATS = (
    "a task folder with task.json, .jsonl, .json (SQuAD or a list of rows), .csv, .tsv/.tab, "
    "or CoNLL token/tag columns (.conll, .iob, .bio, .txt)"
)


class TaskType(StrEnum):
    CLASSIFICATION = "classification"
    REGRESSION = "regression"
    QUESTION_ANSWERING = "question_answering"
    SEQUENCE_LABELING = "sequence_labeling"


@dataclass(frozen=True)
class LoadLimits:
    """Caps that keep one upload from exhausting the worker."""

    max_rows: int = 200_000
    max_text_chars: int = 20_000


class DatasetError(ValueError):
    """Bad input, told the way a person can fix it."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        column: int | None = None,
        field: str | None = None,
    ) -> None:
        self.message = message
        self.file = file
        self.line = line
        self.column = column
        self.field = field
        super().__init__(self.__str__())

    def __str__(self) -> str:
        where = [self.file] if self.file else []
        if self.line is not None:
            where.append(f"line {self.line}")
        if self.column is not None:
            where.append(f"column {self.column}")
        if self.field is not None:
            where.append(f"field '{self.field}'")
        return f"{', '.join(where)}: {self.message}" if where else self.message

    def to_dict(self) -> dict[str, Any]:
        return {"message": self.message, "file": self.file, "line": self.line, "column": self.column,
                "field": self.field}


@dataclass
class TextExample:
    """Classification (label: str) or regression (label: float) row."""

    text: str
    text_pair: str | None = None
    label: str | float | None = None


@dataclass
class TaggingExample:
    tokens: list[str]
    tags: list[str]


@dataclass
class QAExample:
    id: str
    question: str
    context: str
    answer_texts: list[str]
    answer_starts: list[int]


Example = TextExample | TaggingExample | QAExample


@dataclass
class Dataset:
    name: str
    task_type: TaskType
    examples: list[Example]
    labels: list[str]
    source: str = ""

    def __len__(self) -> int:
        return len(self.examples)

    @cached_property
    def content_hash(self) -> str:
        """Identity of the data itself, independent of the file format it came in."""
        digest = hashlib.sha256(f"{HASH_PREFIX}{self.task_type.value}\n".encode())
        for row in self.to_rows():
            line = json.dumps(row, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
            digest.update(line.encode("utf-8") + b"\n")
        return digest.hexdigest()

    def to_rows(self) -> Iterator[dict[str, Any]]:
        """Rows in the shared/data JSON Lines schema."""
        for ex in self.examples:
            if isinstance(ex, TextExample):
                row: dict[str, Any] = {"text": ex.text}
                if ex.text_pair is not None:
                    row["text_pair"] = ex.text_pair
                row["label"] = ex.label
                yield row
            elif isinstance(ex, TaggingExample):
                yield {"tokens": list(ex.tokens), "tags": list(ex.tags)}
            else:
                yield {"id": ex.id, "context": ex.context, "question": ex.question,
                       "answers": {"text": list(ex.answer_texts), "answer_start": list(ex.answer_starts)}}

    def subsample(self, n: int, seed: int = 13) -> Dataset:
        """A deterministic subset of at most n rows, in the original order."""
        if len(self) <= n:
            return self
        keep = sorted(random.Random(seed).sample(range(len(self)), n))
        return Dataset(self.name, self.task_type, [self.examples[i] for i in keep], list(self.labels),
                       self.source)

    @property
    def is_pair(self) -> bool:
        return any(isinstance(ex, TextExample) and ex.text_pair is not None for ex in self.examples)

    def describe(self) -> dict[str, Any]:
        """Summary for people and for the UI: sizes, label balance, text lengths."""
        chars, words = zip(*(_example_length(ex) for ex in self.examples), strict=True) if self else ((), ())
        info: dict[str, Any] = {
            "name": self.name,
            "task_type": self.task_type.value,
            "rows": len(self),
            "labels": self._label_counts(),
            "pair": self.is_pair,
            "length_chars": _length_stats(chars),
            "length_words": _length_stats(words),
        }
        if self.task_type is TaskType.REGRESSION and self:
            values = np.array([cast(TextExample, ex).label for ex in self.examples], dtype=np.float64)
            info["label_stats"] = {"min": float(values.min()), "max": float(values.max()),
                                   "mean": float(values.mean()), "std": float(values.std())}
        if self.task_type is TaskType.QUESTION_ANSWERING:
            info["unanswerable"] = sum(1 for ex in self.examples if not cast(QAExample, ex).answer_texts)
        info["content_hash"] = self.content_hash
        return info

    def _label_counts(self) -> dict[str, int]:
        counts: Counter[str]
        if self.task_type is TaskType.CLASSIFICATION:
            counts = Counter(cast(str, cast(TextExample, ex).label) for ex in self.examples)
        elif self.task_type is TaskType.SEQUENCE_LABELING:
            counts = Counter(tag for ex in self.examples for tag in cast(TaggingExample, ex).tags)
        else:
            return {}
        return {label: counts[label] for label in [*self.labels, *sorted(set(counts) - set(self.labels))]}


def _example_length(ex: Example) -> tuple[int, int]:
    if isinstance(ex, TextExample):
        parts = [ex.text] if ex.text_pair is None else [ex.text, ex.text_pair]
    elif isinstance(ex, TaggingExample):
        return len(" ".join(ex.tokens)), len(ex.tokens)
    else:
        parts = [ex.question, ex.context]
    return sum(len(p) for p in parts), sum(len(p.split()) for p in parts)


def _length_stats(values: Iterable[int]) -> dict[str, float]:
    arr = np.asarray(list(values), dtype=np.float64)
    if arr.size == 0:
        return {"p50": 0.0, "p90": 0.0, "p99": 0.0, "max": 0}
    p50, p90, p99 = np.percentile(arr, [50, 90, 99])  # interpolated: rounded, or p90 reads 34.10000000000002
    return {"p50": round(float(p50), 1), "p90": round(float(p90), 1), "p99": round(float(p99), 1),
            "max": int(arr.max())}


# --------------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------------

_TEXT_ALIASES = {
    "text": ("text", "sentence1", "premise", "question", "sentence"),
    "text_pair": ("text_pair", "sentence2", "hypothesis", "passage"),
    "label": ("label", "labels", "score", "gold_label"),
}
_KNOWN_FIELDS = ("text", "text_pair", "label", "tokens", "tags", "id", "question", "context", "answers")
_CONLL_SUFFIXES = (".conll", ".iob", ".bio", ".txt")


def load_dataset(
    path: str | Path,
    *,
    task_type: TaskType | str | None = None,
    split: str = "train",
    column_map: dict[str, str] | None = None,
    limits: LoadLimits = LoadLimits(),
    name: str | None = None,
) -> Dataset:
    """Read a task folder or a data file, infer what is missing, and validate every row."""
    path = Path(path)
    explicit = _coerce_task_type(task_type)
    mapping = _check_column_map(column_map)
    if not path.exists():
        raise DatasetError(f"no such file or folder: {path}", file=str(path))
    known_labels: list[str] | None = None
    if path.is_dir():
        meta = _read_task_json(path)
        explicit = explicit or meta["task_type"]
        known_labels = meta["labels"]
        name = name or meta["name"]
        data_file = _split_file(path, split)
        display, fmt = f"{path.name}/{data_file.name}", "jsonl"
    else:
        data_file, display = path, path.name
        fmt = _detect_format(path, display, mapping)
    ctx = _Ctx(display, limits, mapping, numeric_strings=fmt in ("csv", "tsv"))
    # CSV/TSV/CoNLL readers apply column_map themselves and hand on rows with our field names.
    build_ctx = ctx if fmt in ("json", "jsonl") else replace(ctx, column_map={})
    try:
        if _is_blank(data_file):
            raise ctx.error("file is empty")
        records = _READERS[fmt](data_file, ctx)
        return _build(records, build_ctx, explicit, name or path.stem, str(path), known_labels)
    except OSError as exc:
        raise DatasetError(f"cannot read the file: {exc.strerror or exc}", file=display) from None


def dataset_from_rows(
    rows: Iterable[dict[str, Any]],
    *,
    name: str = "rows",
    task_type: TaskType | str | None = None,
    column_map: dict[str, str] | None = None,
    limits: LoadLimits = LoadLimits(),
) -> Dataset:
    """Validate in-memory rows exactly like a JSON Lines file; "line" is the row index + 1."""
    ctx = _Ctx(None, limits, _check_column_map(column_map))
    records = ((i, None, row) for i, row in enumerate(rows, 1))
    return _build(records, ctx, _coerce_task_type(task_type), name, "", None)


def infer_task_type(row: Any, column_map: dict[str, str] | None = None) -> TaskType | None:
    """Task type a single row implies: tagging, QA, or None for text rows (decided by their labels)."""
    if not isinstance(row, dict):
        return None
    mapping = column_map or {}
    has = {f for f in ("tokens", "tags", "question", "context", "answers") if mapping.get(f, f) in row}
    if {"tokens", "tags"} <= has:
        return TaskType.SEQUENCE_LABELING
    if {"question", "context", "answers"} <= has:
        return TaskType.QUESTION_ANSWERING
    return None


def _infer_text_task(labels: list[Any], numeric_strings: bool) -> TaskType:
    """Regression only when every label is a number and at least one is not an integer."""
    values = []
    for label in labels:
        if isinstance(label, bool) or not isinstance(label, int | float | str):
            return TaskType.CLASSIFICATION
        if isinstance(label, str):
            if not numeric_strings:
                return TaskType.CLASSIFICATION
            try:
                label = float(label)
            except ValueError:
                return TaskType.CLASSIFICATION
        values.append(float(label))
    return TaskType.REGRESSION if any(not v.is_integer() for v in values) else TaskType.CLASSIFICATION


# --------------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------------

Record = tuple[int | None, str | None, Any]  # (line, where-in-a-nested-JSON, row)


@dataclass
class _Ctx:
    file: str | None
    limits: LoadLimits
    column_map: dict[str, str] = field(default_factory=dict)
    numeric_strings: bool = False  # CSV/TSV labels are strings; all-numeric strings may mean regression

    def error(self, message: str, line: int | None = None, field: str | None = None,
              column: int | None = None, where: str | None = None) -> DatasetError:
        if where:
            message = f"{where}: {message}"
        return DatasetError(message, file=self.file, line=line, column=column, field=field)


def _coerce_task_type(value: TaskType | str | None) -> TaskType | None:
    if value is None or isinstance(value, TaskType):
        return value
    try:
        return TaskType(str(value).strip().lower())
    except ValueError:
        choices = ", ".join(t.value for t in TaskType)
        raise DatasetError(f"unknown task type '{value}' (expected one of {choices})",
                           field="task_type") from None


def _check_column_map(column_map: dict[str, str] | None) -> dict[str, str]:
    for key, value in (column_map or {}).items():
        if key not in _KNOWN_FIELDS:
            raise DatasetError(f"unknown field '{key}' in column_map (expected one of {', '.join(_KNOWN_FIELDS)})",
                               field=str(key))
        if not isinstance(value, str) or not value:
            raise DatasetError(f"column_map['{key}'] must be a column name", field=key)
    return dict(column_map or {})


def _one_of(values: list[str], limit: int = 20) -> str:
    shown = ", ".join(values[:limit])
    return f"{shown}, ... ({len(values)} in all)" if len(values) > limit else shown


def _is_blank(path: Path) -> bool:
    """Only whitespace (after an optional UTF-8 BOM)? Reads just as far as the first other byte."""
    with path.open("rb") as fh:
        chunk = fh.read(65536).removeprefix(b"\xef\xbb\xbf")
        while chunk:
            if chunk.strip():
                return False
            chunk = fh.read(65536)
    return True


def _lines(path: Path, ctx: _Ctx) -> Iterator[tuple[int, str]]:
    """Decoded lines with exact 1-based numbers; bad UTF-8 is reported at its line and byte column."""
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            if b"\x00" in raw:
                raise ctx.error("binary data (a NUL byte): taskrank reads text files (JSONL, CSV/TSV, CoNLL, JSON)",
                                line=lineno, column=raw.index(b"\x00") + 1)
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                bad = raw[exc.start:exc.start + 1].hex()
                raise ctx.error(f"not valid UTF-8 (byte 0x{bad}); save the file as UTF-8",
                                line=lineno, column=exc.start + 1) from None
            yield lineno, text[1:] if lineno == 1 and text.startswith("\ufeff") else text


def _json_value(text: str, ctx: _Ctx, line: int) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ctx.error(f"invalid JSON: {exc.msg}", line=line + exc.lineno - 1, column=exc.colno) from None
    except RecursionError:
        raise ctx.error("invalid JSON: nested too deeply", line=line) from None


# --------------------------------------------------------------------------------------------------
# Format detection and readers: each yields Records
# --------------------------------------------------------------------------------------------------

def _detect_format(path: Path, display: str, mapping: dict[str, str]) -> str:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix == ".json":
        return "json"
    if suffix == ".csv":
        return "csv"
    if suffix in (".tsv", ".tab"):
        return "tsv" if _is_header(_first_line(path, display), "\t", mapping) else "conll"
    if suffix in _CONLL_SUFFIXES:
        return "conll"
    first = _first_line(path, display).lstrip()
    if first.startswith(("{", "[")):
        return "json"
    for fmt, delimiter in (("tsv", "\t"), ("csv", ",")):
        if delimiter in first and _is_header(first, delimiter, mapping):
            return fmt
    raise DatasetError(f"cannot tell the format of '{path.name}'; supported: {SUPPORTED_FORMATS}", file=display)


def _first_line(path: Path, display: str) -> str:
    for _, text in _lines(path, _Ctx(display, LoadLimits())):
        if text.strip():
            return text
    return ""


def _is_header(line: str, delimiter: str, mapping: dict[str, str]) -> bool:
    names = {n.strip().lower() for n in next(csv.reader([line], delimiter=delimiter), [])}
    known = {a for aliases in _TEXT_ALIASES.values() for a in aliases} | {v.lower() for v in mapping.values()}
    return bool(names & known)


def _split_file(folder: Path, split: str) -> Path:
    data_file = folder / f"{split}.jsonl"
    if not data_file.is_file():
        found = ", ".join(sorted(p.stem for p in folder.glob("*.jsonl"))) or "none"
        raise DatasetError(f"no split '{split}' in {folder} (splits found: {found})", file=str(folder))
    return data_file


def _read_task_json(folder: Path) -> dict[str, Any]:
    meta_file = folder / "task.json"
    if not meta_file.is_file():
        raise DatasetError(f"{folder} is a folder without task.json; give a task folder or a data file",
                           file=str(folder))
    ctx = _Ctx(f"{folder.name}/task.json", LoadLimits())
    meta = _json_value("".join(text for _, text in _lines(meta_file, ctx)), ctx, 1)
    if not isinstance(meta, dict):
        raise ctx.error("task.json must be a JSON object", line=1)
    task_type = meta.get("task_type")
    if task_type is None:
        raise ctx.error("missing task_type", field="task_type")
    try:
        task_type = _coerce_task_type(task_type)
    except DatasetError as exc:
        raise ctx.error(exc.message, field="task_type") from None
    labels = meta.get("labels")
    if labels is not None and not (isinstance(labels, list) and all(isinstance(x, str) for x in labels)):
        raise ctx.error("labels must be a list of strings", field="labels")
    name = meta.get("name")
    return {"task_type": task_type, "labels": labels or None,
            "name": name if isinstance(name, str) and name else folder.name}


def _jsonl_records(path: Path, ctx: _Ctx) -> Iterator[Record]:
    for lineno, text in _lines(path, ctx):
        if text.strip():
            yield lineno, None, _json_value(text, ctx, lineno)


_WS = re.compile(r"\s*")


def _skip_ws(text: str, pos: int = 0) -> int:
    """The end of the (possibly empty) run of whitespace at `pos`."""
    match = _WS.match(text, pos)
    assert match is not None  # r"\s*" matches everywhere, if only the empty string
    return match.end()


def _json_records(path: Path, ctx: _Ctx) -> Iterator[Record]:
    """A .json file: SQuAD, a list of rows, a single row, or JSON Lines under a .json name."""
    raw = path.read_bytes()  # a JSON document has to be parsed whole
    try:
        text = raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        line_start = raw.rfind(b"\n", 0, exc.start) + 1
        raise ctx.error(f"not valid UTF-8 (byte 0x{raw[exc.start:exc.start + 1].hex()}); save the file as UTF-8",
                        line=raw.count(b"\n", 0, exc.start) + 1, column=exc.start - line_start + 1) from None
    del raw
    pos = _skip_ws(text)
    if text.startswith("[", pos):
        yield from _json_array(text, pos, ctx)
        return
    value, end = _raw_decode(text, pos, ctx)
    if text[_skip_ws(text, end):]:
        yield from _jsonl_records(path, ctx)  # more values follow: JSON Lines named .json
    elif isinstance(value, dict) and isinstance(value.get("data"), list):
        yield from _squad_records(value["data"], ctx)
    else:
        yield _line_at(text, pos), None, value


def _line_at(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def _raw_decode(text: str, pos: int, ctx: _Ctx) -> tuple[Any, int]:
    try:
        return json.JSONDecoder().raw_decode(text, pos)
    except json.JSONDecodeError as exc:
        raise ctx.error(f"invalid JSON: {exc.msg}", line=exc.lineno, column=exc.colno) from None
    except RecursionError:
        raise ctx.error("invalid JSON: nested too deeply", line=_line_at(text, pos)) from None


def _json_array(text: str, pos: int, ctx: _Ctx) -> Iterator[Record]:
    """Decode a top-level list one element at a time so each row keeps its line number."""
    pos, line, counted = _skip_ws(text, pos + 1), 1, 0
    if text.startswith("]", pos):
        return
    while True:
        line, counted = line + text.count("\n", counted, pos), pos
        value, pos = _raw_decode(text, pos, ctx)
        yield line, None, value
        pos = _skip_ws(text, pos)
        if text.startswith("]", pos):
            if text[_skip_ws(text, pos + 1):]:
                raise ctx.error("invalid JSON: extra data after the list", line=_line_at(text, pos + 1))
            return
        if not text.startswith(",", pos):
            raise ctx.error("invalid JSON: expected ',' or ']' after a list item", line=_line_at(text, pos))
        pos = _skip_ws(text, pos + 1)


def _squad_records(articles: list[Any], ctx: _Ctx) -> Iterator[Record]:
    """Flatten SQuAD's data/paragraphs/qas nesting into one row per question."""
    for a, article in enumerate(articles):
        paragraphs = article.get("paragraphs") if isinstance(article, dict) else None
        if not isinstance(paragraphs, list):
            raise ctx.error("SQuAD article needs a 'paragraphs' list", where=f"data[{a}]", field="paragraphs")
        for p, paragraph in enumerate(paragraphs):
            where = f"data[{a}].paragraphs[{p}]"
            qas = paragraph.get("qas") if isinstance(paragraph, dict) else None
            if not isinstance(qas, list):
                raise ctx.error("SQuAD paragraph needs a 'qas' list", where=where, field="qas")
            for q, qa in enumerate(qas):
                if not isinstance(qa, dict):
                    raise ctx.error("question is not a JSON object", where=f"{where}.qas[{q}]")
                answers = [] if qa.get("is_impossible") is True else qa.get("answers")
                row = {"id": qa.get("id"), "question": qa.get("question"), "context": paragraph.get("context"),
                       "answers": answers}
                yield None, f"{where}.qas[{q}]", {ctx.column_map.get(k, k): v for k, v in row.items()}


def _csv_records(path: Path, ctx: _Ctx, delimiter: str = ",") -> Iterator[Record]:
    current = 0  # the last physical line handed to csv.reader

    def physical_lines() -> Iterator[str]:
        nonlocal current
        for lineno, text in _lines(path, ctx):
            current = lineno
            yield text

    quoting: Literal[0, 1, 2, 3] = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    reader = csv.reader(physical_lines(), delimiter=delimiter, quoting=quoting)
    header: list[str] | None = None
    while True:
        start = current + 1
        try:
            row = next(reader, None)
        except csv.Error as exc:
            raise ctx.error(f"malformed {'TSV' if delimiter == chr(9) else 'CSV'}: {exc}", line=current) from None
        if row is None:
            return
        if not any(cell.strip() for cell in row):
            continue
        if header is None:
            header, columns = row, _csv_columns(row, ctx, start)
            continue
        if len(row) != len(header):
            raise ctx.error(f"row has {len(row)} fields but the header has {len(header)} columns", line=start)
        record: dict[str, str | None] = {f: row[i] for f, i in columns.items()}
        if "text_pair" in record and not cast(str, record["text_pair"]).strip():
            record["text_pair"] = None  # CSV has no null: an empty pair cell means "no pair"
        yield start, None, record


def _csv_columns(header: list[str], ctx: _Ctx, line: int) -> dict[str, int]:
    """Map our fields to column indexes (see the module docstring for the rule)."""
    resolved = _resolve_text_keys([h.strip() for h in header], ctx.column_map)
    shown = [_printable(h.strip()) for h in header[:30]]
    found = ", ".join(shown) + (f", ... {len(header) - 30} more" if len(header) > 30 else "")
    for f in ("text", "text_pair", "label"):
        if resolved[f] is None and (f != "text_pair" or f in ctx.column_map):
            wanted = (f"column '{ctx.column_map[f]}' (column_map['{f}'])" if f in ctx.column_map
                      else f"a column named one of {', '.join(_TEXT_ALIASES[f])}")
            raise ctx.error(f"no column for '{f}': expected {wanted}; columns found: {found}", line=line, field=f)
    names = [h.strip() for h in header]
    return {f: names.index(col) for f, col in resolved.items() if col is not None}


def _resolve_text_keys(names: Iterable[str], column_map: dict[str, str]) -> dict[str, str | None]:
    """Which of `names` holds text, text_pair and label (column_map first, then the aliases)."""
    by_lower: dict[str, str] = {}
    for n in names:
        by_lower.setdefault(n.lower(), n)
    chosen: dict[str, str | None] = {}
    for f, aliases in _TEXT_ALIASES.items():
        if f in column_map:
            wanted = column_map[f]
            chosen[f] = wanted if wanted in by_lower.values() else by_lower.get(wanted.lower())
            continue
        taken = {c for c in chosen.values() if c} | {by_lower.get(v.lower()) for v in column_map.values()}
        chosen[f] = next((by_lower[a] for a in aliases if a in by_lower and by_lower[a] not in taken), None)
    text = chosen["text"]
    if chosen["text_pair"] is None and "text_pair" not in column_map and text and text.lower() == "question":
        chosen["text_pair"] = by_lower.get("sentence")  # QNLI: question is the text, sentence the pair
    return chosen


def _tsv_records(path: Path, ctx: _Ctx) -> Iterator[Record]:
    return _csv_records(path, ctx, delimiter="\t")


def _conll_records(path: Path, ctx: _Ctx) -> Iterator[Record]:
    """token<TAB or spaces>...tag lines; blank lines end sentences; -DOCSTART- lines are skipped."""
    tokens: list[str] = []
    tags: list[str] = []
    start = width = width_line = None
    for lineno, text in itertools.chain(_lines(path, ctx), [(None, "")]):
        if not text.strip() or text.split(None, 1)[0] == "-DOCSTART-":
            if tokens:
                yield start, None, {"tokens": tokens, "tags": tags}
                tokens, tags = [], []
            continue
        line = text.rstrip("\r\n")
        parts = [p.strip() for p in line.split("\t")] if "\t" in line else line.split()
        if len(parts) < 2:
            raise ctx.error("expected a token and a tag separated by a tab or spaces, found one field",
                            line=lineno)
        if width is None:
            width, width_line = len(parts), lineno
        elif len(parts) != width:
            raise ctx.error(f"found {len(parts)} columns but line {width_line} has {width}", line=lineno)
        if not parts[0] or not parts[-1]:
            raise ctx.error("empty token or tag", line=lineno, field="tokens" if not parts[0] else "tags")
        if not tokens:
            start = lineno
        tokens.append(parts[0])
        tags.append(parts[-1])


_READERS = {"jsonl": _jsonl_records, "json": _json_records, "csv": _csv_records, "tsv": _tsv_records,
            "conll": _conll_records}


# --------------------------------------------------------------------------------------------------
# Validation: records -> examples
# --------------------------------------------------------------------------------------------------

def _build(records: Iterable[Record], ctx: _Ctx, task_type: TaskType | None, name: str, source: str,
           known_labels: list[str] | None) -> Dataset:
    records = _limited(records, ctx)
    first = next(records, None)
    if first is None:
        raise ctx.error("no data rows")
    records = itertools.chain([first], records)
    kind = task_type or infer_task_type(first[2], ctx.column_map)
    if kind is TaskType.SEQUENCE_LABELING:
        examples, labels = _tagging_examples(records, ctx, known_labels)
    elif kind is TaskType.QUESTION_ANSWERING:
        examples, labels = _qa_examples(records, ctx), []
    else:
        kind, examples, labels = _text_examples(records, ctx, kind, known_labels)
    return Dataset(name=name, task_type=kind, examples=examples, labels=labels, source=source)


def _limited(records: Iterable[Record], ctx: _Ctx) -> Iterator[Record]:
    """Stop at the first row over limits.max_rows, before reading the rest of the file."""
    for count, record in enumerate(records, 1):
        if count > ctx.limits.max_rows:
            raise ctx.error(f"more than {ctx.limits.max_rows} rows (limit TASKRANK_MAX_ROWS)",
                            line=record[0], where=record[1])
        yield record


def _row(record: Record, ctx: _Ctx) -> dict[str, Any]:
    line, where, obj = record
    if not isinstance(obj, dict):
        raise ctx.error(f"a row must be a JSON object, not {_json_type(obj)}", line=line, where=where)
    return obj


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


@overload
def _string(row: dict[str, Any], key: str | None, f: str, record: Record, ctx: _Ctx,
            required: Literal[True] = ...) -> str: ...
@overload
def _string(row: dict[str, Any], key: str | None, f: str, record: Record, ctx: _Ctx,
            required: bool) -> str | None: ...
def _string(row: dict[str, Any], key: str | None, f: str, record: Record, ctx: _Ctx,
            required: bool = True) -> str | None:
    """A text field: present (if required), a string, not blank, within max_text_chars."""
    line, where, _ = record
    value = row.get(key) if key is not None else None
    if value is None:
        if required:
            shown = f" (key '{key}')" if key and key != f else ""
            raise ctx.error(f"missing field '{f}'{shown}", line=line, field=f, where=where)
        return None
    if not isinstance(value, str):
        raise ctx.error(f"{f} must be a string, not {_json_type(value)}", line=line, field=f, where=where)
    if not value.strip():
        raise ctx.error(f"empty {f}", line=line, field=f, where=where)
    _check_length(len(value), f, record, ctx)
    return value


def _check_length(n: int, f: str, record: Record, ctx: _Ctx) -> None:
    if n > ctx.limits.max_text_chars:
        raise ctx.error(f"{f} has {n} characters, more than the limit of {ctx.limits.max_text_chars} "
                        "(TASKRANK_MAX_TEXT_CHARS)",
                        line=record[0], field=f, where=record[1])


def _text_examples(records: Iterable[Record], ctx: _Ctx, task_type: TaskType | None,
                   known_labels: list[str] | None) -> tuple[TaskType, list[Example], list[str]]:
    examples: list[TextExample] = []
    raw_labels: list[Any] = []
    seen: list[Record] = []
    keys_cache: dict[tuple[str, ...], dict[str, str | None]] = {}
    for record in records:
        row = _row(record, ctx)
        sig = tuple(row)
        keys = keys_cache.get(sig) or keys_cache.setdefault(sig, _resolve_text_keys(sig, ctx.column_map))
        text = _string(row, keys["text"] or ctx.column_map.get("text", "text"), "text", record, ctx)
        pair = _string(row, keys["text_pair"], "text_pair", record, ctx, required=False)
        label = row.get(keys["label"]) if keys["label"] else None
        if label is None:
            raise ctx.error("missing field 'label'", line=record[0], field="label", where=record[1])
        if not isinstance(label, str | int | float):
            raise ctx.error(f"label must be a string or a number, not {_json_type(label)}",
                            line=record[0], field="label", where=record[1])
        examples.append(TextExample(text=text, text_pair=pair))
        raw_labels.append(label)
        seen.append(record)
    if task_type is None:
        _check_label_kinds(raw_labels, seen, ctx)
    task_type = task_type or _infer_text_task(raw_labels, ctx.numeric_strings)
    if task_type is TaskType.REGRESSION:
        for ex, label, record in zip(examples, raw_labels, seen, strict=True):
            ex.label = _regression_label(label, record, ctx)
        return task_type, cast(list[Example], examples), []
    allowed = set(known_labels or ())
    for ex, label, record in zip(examples, raw_labels, seen, strict=True):
        ex.label = _class_label(label, record, ctx)
        if known_labels and ex.label not in allowed:
            raise ctx.error(f"unknown label '{ex.label}' (expected one of {_one_of(known_labels)})",
                            line=record[0], field="label", where=record[1])
    distinct = sorted({cast(str, ex.label) for ex in examples})
    if len(distinct) < 2:
        raise ctx.error(f"only one label ('{distinct[0]}') in {len(examples)} rows; classification needs at "
                        "least two", field="label")
    return task_type, cast(list[Example], examples), list(known_labels) if known_labels else distinct


def _label_kind(label: Any, numeric_strings: bool) -> str | None:
    """'number' (a JSON number, or a CSV/TSV cell that parses as one), 'text', or None when either reading
    fits (a boolean; a JSON string that looks like a number, as `"0"` beside `1`)."""
    if isinstance(label, bool):
        return None
    if isinstance(label, int | float):
        return "number"
    try:
        float(label)
    except ValueError:
        return "text"
    return "number" if numeric_strings else None


def _check_label_kinds(labels: list[Any], records: list[Record], ctx: _Ctx) -> None:
    """Refuse labels that mix numbers and text when the task type is inferred.

    `2.5, 3, neg, pos` would otherwise become a 4-class task (or, read as scores, fail on `neg`): no
    reading of such a column is likely to be what was meant, so the loader says where the kinds meet
    instead of guessing. An explicit task type decides: classification reads every label as a class name.
    """
    first: dict[str, tuple[Any, Record]] = {}
    for label, record in zip(labels, records, strict=True):
        kind = _label_kind(label, ctx.numeric_strings)
        if kind is None or kind in first:
            continue
        first[kind] = (label, record)
        if len(first) == 2:
            kinds = {"number": "a number", "text": "text"}
            other_kind = "number" if kind == "text" else "text"
            other, other_record = first[other_kind]
            where = f"line {other_record[0]}" if other_record[0] is not None else "an earlier row"
            raise ctx.error(
                f"mixed label types: {_show(label)} is {kinds[kind]} but {where} has {_show(other)}, "
                f"{kinds[other_kind]}; labels must be all numbers (scores or numeric classes) or all text "
                "(class names). Fix the labels, or set the task type (classification reads every label as a "
                "class name)", line=record[0], field="label", where=record[1])


def _regression_label(label: Any, record: Record, ctx: _Ctx) -> float:
    value: float | None = None
    if isinstance(label, int | float) and not isinstance(label, bool):
        value = float(label)
    elif isinstance(label, str):
        try:
            value = float(label.strip())
        except ValueError:
            value = None
    if value is None:
        raise ctx.error(f"regression label {_show(label)} is not a number", line=record[0], field="label",
                        where=record[1])
    if not math.isfinite(value):
        raise ctx.error(f"regression label {_show(label)} is not a finite number", line=record[0],
                        field="label", where=record[1])
    return value


def _printable(text: str, limit: int = 60) -> str:
    """A column name fit for a message: control characters escaped (garbage input), long names cut."""
    text = "".join(ch if ch.isprintable() else f"\\x{ord(ch):02x}" if ord(ch) < 256 else f"\\u{ord(ch):04x}"
                   for ch in text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _show(value: Any) -> str:
    return f"'{value}'" if isinstance(value, str) else json.dumps(value)


def _class_label(label: Any, record: Record, ctx: _Ctx) -> str:
    """Labels are strings; JSON numbers that are integers read as "1", never "1.0"."""
    if isinstance(label, bool):
        text = "true" if label else "false"
    elif isinstance(label, float) and label.is_integer():
        text = str(int(label))
    else:
        text = str(label).strip()
    if not text:
        raise ctx.error("empty label", line=record[0], field="label", where=record[1])
    return text


def _tagging_examples(records: Iterable[Record], ctx: _Ctx,
                      known_labels: list[str] | None) -> tuple[list[Example], list[str]]:
    examples: list[Example] = []
    allowed = set(known_labels or ())
    seen_tags: set[str] = set()
    for record in records:
        row = _row(record, ctx)
        tokens = _string_list(row, "tokens", record, ctx)
        tags = _string_list(row, "tags", record, ctx)
        if len(tokens) != len(tags):
            raise ctx.error(f"{len(tokens)} tokens but {len(tags)} tags; they must pair up one to one",
                            line=record[0], field="tags", where=record[1])
        _check_length(sum(map(len, tokens)) + len(tokens) - 1, "tokens", record, ctx)
        for i, tag in enumerate(tags):
            if known_labels and tag not in allowed:
                raise ctx.error(f"unknown label '{tag}' for token {i + 1} '{tokens[i]}' (expected one of "
                                f"{_one_of(known_labels)})", line=record[0], field="tags", where=record[1])
        seen_tags.update(tags)
        examples.append(TaggingExample(tokens=tokens, tags=tags))
    return examples, list(known_labels) if known_labels else sorted(seen_tags)


def _string_list(row: dict[str, Any], f: str, record: Record, ctx: _Ctx) -> list[str]:
    line, where, _ = record
    value = row.get(ctx.column_map.get(f, f))
    if value is None:
        raise ctx.error(f"missing field '{f}'", line=line, field=f, where=where)
    if not isinstance(value, list):
        raise ctx.error(f"{f} must be a list of strings, not {_json_type(value)}", line=line, field=f, where=where)
    if not value:
        raise ctx.error(f"{f} is empty", line=line, field=f, where=where)
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise ctx.error(f"{f}[{i}] must be a string, not {_json_type(item)}", line=line, field=f, where=where)
        if not item.strip():
            raise ctx.error(f"{f}[{i}] is empty", line=line, field=f, where=where)
    return value


def _qa_examples(records: Iterable[Record], ctx: _Ctx) -> list[Example]:
    examples: list[Example] = []
    for n, record in enumerate(records, 1):
        row = _row(record, ctx)
        key = ctx.column_map.get
        qid = row.get(key("id", "id"))
        if qid is None:
            qid = str(n)  # ids only name questions; a missing one is numbered
        elif isinstance(qid, bool) or not isinstance(qid, str | int):
            raise ctx.error(f"id must be a string, not {_json_type(qid)}", line=record[0], field="id",
                            where=record[1])
        question = _string(row, key("question", "question"), "question", record, ctx)
        context = _string(row, key("context", "context"), "context", record, ctx)
        texts, starts = _answers(row.get(key("answers", "answers")), context, record, ctx)
        examples.append(QAExample(id=str(qid), question=question, context=context, answer_texts=texts,
                                  answer_starts=starts))
    return examples


def _answers(value: Any, context: str, record: Record, ctx: _Ctx) -> tuple[list[str], list[int]]:
    """SQuAD answers ({"text": [...], "answer_start": [...]} or a list of {text, answer_start}), checked
    against the context so a span always points at its text."""
    def fail(message: str) -> DatasetError:
        return ctx.error(message, line=record[0], field="answers", where=record[1])

    if value is None:
        raise fail("missing field 'answers' (use {\"text\": [], \"answer_start\": []} for no answer)")
    texts: list[Any] | None
    starts: list[Any] | None
    if isinstance(value, list) and all(isinstance(a, dict) for a in value):
        texts = [a.get("text") for a in value]
        starts = [a.get("answer_start") for a in value]
    elif isinstance(value, dict):
        texts, starts = value.get("text"), value.get("answer_start")
        if not isinstance(texts, list) or not isinstance(starts, list):
            raise fail("answers needs a 'text' list and an 'answer_start' list")
    else:
        raise fail(f"answers must be an object with 'text' and 'answer_start' lists, not {_json_type(value)}")
    if len(texts) != len(starts):
        raise fail(f"answers has {len(texts)} texts but {len(starts)} answer_start values")
    for text, start in zip(texts, starts, strict=True):
        if not isinstance(text, str) or not text:
            raise fail(f"answer text must be a non-empty string, not {_show(text)}")
        if isinstance(start, bool) or not isinstance(start, int):
            raise fail(f"answer_start must be an integer, not {_show(start)}")
        if not 0 <= start < len(context):
            raise fail(f"answer_start {start} is outside the context (0..{len(context) - 1})")
        found = context[start:start + len(text)]
        if found != text:
            raise fail(f"answer '{text}' not found at answer_start {start} (the context there reads '{found}')")
    return list(texts), list(starts)
