"""Build the source-task library: embed every task folder of a data directory into a `LibraryStore`.

Each source is embedded on a seeded subsample of at most `max_rows` training rows with TextEmb and
SEmb (one shared forward pass) and TaskEmb. The library's options are recorded in every task's
provenance, so a target is later embedded with exactly the same options (`embed_target`) and
ranking compares like with like. A task whose data hash, model hash and options match what is
stored is skipped, so a build is resumable and idempotent.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from embeddings.api import EMBEDDING_METHODS, embed_many
from embeddings.data import Dataset, LoadLimits, load_dataset
from embeddings.encoders import Encoder
from embeddings.options import EmbedOptions, ProgressFn, TaskEmbOptions, library_versions, no_progress
from embeddings.registry import METHODS, in_pass
from embeddings.result import EmbeddingResult
from library.errors import LibraryError
from library.methods import RANKING_METHODS
from library.store import LibraryStore, SourceTask

OPTIONS_FORMAT = 1
# Performance knobs: they change how rows are batched, not what is computed, so they are not part of
# the library's identity (a library built on a GPU ranks CPU-embedded targets).
_PERFORMANCE_FIELDS = frozenset({"max_tokens_per_batch", "max_batch_size"})
# Task folders are capped at 10,000 rows; these limits only guard against a runaway file.
_SOURCE_LIMITS = LoadLimits(max_rows=1_000_000, max_text_chars=1_000_000)


def taskrank_version() -> str:
    from embeddings import __version__

    return __version__


@dataclass(frozen=True)
class BuildOptions:
    """How every source (and so every target) is embedded."""

    max_rows: int = 1000
    seed: int = 13
    methods: tuple[str, ...] = METHODS  # not the library-side variants (taskemb_ft): no dataset alone gives them
    embed: EmbedOptions = field(default_factory=EmbedOptions)
    taskemb: TaskEmbOptions = field(default_factory=TaskEmbOptions)

    def __post_init__(self) -> None:
        if self.max_rows < 1:
            raise ValueError("max_rows must be at least 1")
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise ValueError(
                f"methods must be a non-empty subset of {', '.join(METHODS)}, got {list(self.methods)}"
            )
        # Canonical order, no duplicates: the identity must not depend on how methods were listed.
        object.__setattr__(self, "methods", tuple(m for m in METHODS if m in self.methods))

    def embed_options(self) -> EmbedOptions:
        return self.embed

    def taskemb_options(self) -> TaskEmbOptions:
        """TaskEmb options with the build seed (head initialisation, batch order)."""
        return replace(self.taskemb, seed=self.seed)

    def with_token_budget(self, tokens: int) -> BuildOptions:
        """The same options with another padded-token budget per batch (a performance knob only)."""
        tokens = max(tokens, self.embed.qa_max_length, self.taskemb.qa_max_length)
        return replace(
            self,
            embed=replace(self.embed, max_tokens_per_batch=tokens),
            taskemb=replace(self.taskemb, max_tokens_per_batch=tokens),
        )

    def identity(self) -> dict[str, Any]:
        """What determines the vectors: JSON-ready and free of performance knobs."""
        out: dict[str, Any] = {
            "format": OPTIONS_FORMAT,
            "max_rows": self.max_rows,
            "seed": self.seed,
            "methods": list(self.methods),
        }
        if in_pass(self.methods, "text"):
            out["embed"] = _without_performance(asdict(self.embed))
        if "taskemb" in self.methods:
            taskemb = _without_performance(asdict(self.taskemb_options()))
            taskemb["components"] = list(taskemb["components"])
            out["taskemb"] = taskemb
        return out

    @property
    def options_hash(self) -> str:
        text = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @classmethod
    def from_identity(cls, data: dict[str, Any]) -> BuildOptions:
        """Inverse of `identity()`; a LibraryError if the options come from an unknown format."""
        if data.get("format") != OPTIONS_FORMAT:
            raise LibraryError(
                f"library options have format {data.get('format')!r}; this taskrank reads {OPTIONS_FORMAT}"
            )
        try:
            embed = EmbedOptions(**_known(EmbedOptions, data.get("embed", {})))
            raw = dict(data.get("taskemb", {}))
            if "components" in raw:
                raw["components"] = tuple(raw["components"])
            taskemb = TaskEmbOptions(**_known(TaskEmbOptions, raw))
            return cls(
                max_rows=int(data["max_rows"]),
                seed=int(data["seed"]),
                methods=tuple(data["methods"]),
                embed=embed,
                taskemb=taskemb,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise LibraryError(f"cannot read the library's build options: {exc}") from exc


def _without_performance(options: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in options.items() if k not in _PERFORMANCE_FIELDS}


def _known(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise LibraryError(
            f"the library was built with {cls.__name__} fields {unknown} that this taskrank does not know"
        )
    return dict(values)


# -------------------------------------------------------------------------------------------------
# Embedding a dataset the library's way
# -------------------------------------------------------------------------------------------------


def methods_for(method: str) -> tuple[str, ...]:
    """The embedding methods a ranking method (or an embedding method itself) needs of a target.

    A library-side variant (`taskemb_ft`) is searched with the target's `target_method` embedding.
    """
    if method in EMBEDDING_METHODS:
        return (EMBEDDING_METHODS[method].target_method or method,)
    return RANKING_METHODS.get(method).needs


def embed_target(
    dataset: Dataset,
    encoder: Encoder,
    methods: Sequence[str],
    options: BuildOptions,
    on_progress: ProgressFn = no_progress,
) -> dict[str, EmbeddingResult]:
    """Embed a dataset with exactly the library's options: the same row cap, seed and method options.

    Sources are embedded through this function too, so a target and the sources are comparable.
    Returns method -> EmbeddingResult for the requested methods (`ensemble` expands to all three).
    """
    wanted: list[str] = []
    for m in methods:
        for part in methods_for(m):
            if part not in wanted:
                wanted.append(part)
    missing = [m for m in wanted if m not in options.methods]
    if missing:
        raise LibraryError(
            f"the library has no {', '.join(missing)} embeddings (built with {', '.join(options.methods)})"
        )
    sample = dataset.subsample(options.max_rows, options.seed)
    results = embed_many(sample, wanted, encoder, options.embed_options(), options.taskemb_options(), on_progress)
    return {m: results[m] for m in wanted}


# -------------------------------------------------------------------------------------------------
# What the library was built with
# -------------------------------------------------------------------------------------------------


def _build_info(task: SourceTask) -> dict[str, Any]:
    build = task.provenance.get("build") if isinstance(task.provenance, dict) else None
    return build if isinstance(build, dict) else {}


def library_options(store: LibraryStore) -> BuildOptions | None:
    """The options most of the library's sources were built with (None for an empty or foreign library)."""
    counts: Counter[str] = Counter()
    by_hash: dict[str, dict[str, Any]] = {}
    for task in store.list_tasks():
        options = _build_info(task).get("options")
        if isinstance(options, dict):
            key = json.dumps(options, sort_keys=True)
            counts[key] += 1
            by_hash[key] = options
    if counts:
        return BuildOptions.from_identity(by_hash[counts.most_common(1)[0][0]])
    for record in reversed(store.builds()):
        if isinstance(record.get("options"), dict):
            return BuildOptions.from_identity(record["options"])
    return None


def library_models(store: LibraryStore) -> dict[str, str]:
    """model name -> weights hash of the library's embeddings."""
    return {k.model_name: k.model_hash for k in store.keys()}


def check_encoder(store: LibraryStore, encoder: Encoder) -> None:
    """A clear error when the library was embedded with other weights than `encoder`."""
    models = library_models(store)
    if not models or models.get(encoder.name) == encoder.weights_hash:
        return
    name, weights = next(iter(sorted(models.items())))
    if encoder.name in models:
        raise LibraryError(
            f"library built with {name} weights {models[encoder.name]}, the configured encoder {encoder.name} "
            f"has weights {encoder.weights_hash}: rebuild the library (taskrank library build) or use those weights"
        )
    raise LibraryError(
        f"library built with model {name} (hash {weights}), the configured encoder is {encoder.name} "
        f"(hash {encoder.weights_hash}): set TASKRANK_MODEL={name} or rebuild the library"
    )


def _is_current(
    store: LibraryStore, task: SourceTask, data_hash: str, encoder: Encoder, options: BuildOptions
) -> bool:
    build = _build_info(task)
    if (
        task.data_hash != data_hash
        or build.get("model_name") != encoder.name
        or build.get("model_hash") != encoder.weights_hash
        or build.get("options_hash") != options.options_hash
    ):
        return False
    present = {
        e.method
        for e in store.task_embeddings(task.id)
        if e.model_name == encoder.name and e.model_hash == encoder.weights_hash
    }
    return set(options.methods) <= present


# -------------------------------------------------------------------------------------------------
# Adding sources
# -------------------------------------------------------------------------------------------------


@dataclass
class TaskReport:
    name: str
    status: str  # "embedded" | "replaced" | "skipped"
    seconds: float = 0.0
    rows_used: int = 0
    task_type: str = ""


@dataclass
class BuildReport:
    tasks: list[TaskReport]
    seconds: float
    model_name: str
    model_hash: str
    options: dict[str, Any]
    library_version: str
    build_id: int | None = None

    @property
    def embedded(self) -> list[str]:
        return [t.name for t in self.tasks if t.status != "skipped"]

    @property
    def skipped(self) -> list[str]:
        return [t.name for t in self.tasks if t.status == "skipped"]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def add_source(
    store: LibraryStore,
    dataset: Dataset,
    encoder: Encoder,
    options: BuildOptions,
    *,
    name: str | None = None,
    num_train: int | None = None,
    num_dev: int | None = None,
    description: str = "",
    provenance: dict[str, Any] | None = None,
    replace_existing: bool = False,
    on_progress: ProgressFn = no_progress,
) -> tuple[SourceTask, TaskReport]:
    """Embed `dataset` (all of it is the source; the library's row cap applies) and add it to the store.

    `data_hash` is the content hash of the FULL dataset, so an upload of the same data is recognised
    (and excluded from its own ranking); the embedded subsample's hash and size go to provenance.
    """
    name = (name or dataset.name).strip()
    check_encoder(store, encoder)
    existing = store.get_task(name)
    if existing is not None and not replace_existing:
        raise LibraryError(f"source task {name!r} already exists: remove it first")
    started = time.perf_counter()
    results = embed_target(dataset, encoder, options.methods, options, on_progress)
    seconds = time.perf_counter() - started
    first = next(iter(results.values()))
    sample_hash = first.dataset_hash
    build = {
        "model_name": encoder.name,
        "model_hash": encoder.weights_hash,
        "options": options.identity(),
        "options_hash": options.options_hash,
        "max_rows": options.max_rows,
        "seed": options.seed,
        "rows_total": len(dataset),
        "rows_used": first.num_examples,
        "subsample_hash": sample_hash,
        "features": {m: r.num_features for m, r in results.items()},
        "tokens": first.num_tokens,
        "taskrank_version": taskrank_version(),
        "versions": library_versions(),
        "device": str(encoder.device),
        "seconds": {
            **{m: round(r.seconds, 3) for m, r in results.items() if m == "taskemb"},
            **({"textemb+semb": round(first.seconds, 3)} if first.method != "taskemb" else {}),
            "total": round(seconds, 3),
        },
        "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    info = {**(provenance or {}), "build": build}
    if existing is not None:
        store.remove_task(existing.id)
    task = store.add_task(
        name,
        dataset.task_type.value,
        num_train=len(dataset) if num_train is None else num_train,
        num_dev=num_dev,
        data_hash=dataset.content_hash,
        description=description,
        provenance=info,
    )
    try:
        for result in results.values():
            store.add_embedding(task.id, result)
    except BaseException:
        store.remove_task(task.id)  # no half-embedded source is left behind
        raise
    status = "replaced" if existing is not None else "embedded"
    return task, TaskReport(name, status, round(seconds, 3), first.num_examples, dataset.task_type.value)


def task_folders(data_dir: str | Path, only: Iterable[str] | None = None) -> list[Path]:
    """Task folders (with a task.json) under data_dir, by name; data_dir itself if it is one."""
    root = Path(data_dir)
    if not root.is_dir():
        raise ValueError(f"no such data directory: {root}")
    folders = (
        [root]
        if (root / "task.json").is_file()
        else sorted(p for p in root.iterdir() if p.is_dir() and (p / "task.json").is_file())
    )
    if not folders:
        raise ValueError(f"{root} has no task folders (sub-folders with a task.json)")
    if only is not None:
        wanted = [o.strip() for o in only if o.strip()]
        by_name = {p.name: p for p in folders}
        unknown = [w for w in wanted if w not in by_name]
        if unknown:
            raise ValueError(
                f"unknown task(s) {', '.join(unknown)} in {root}; found: {', '.join(sorted(by_name))}"
            )
        folders = [by_name[w] for w in wanted]
    return folders


def _read_meta(folder: Path) -> dict[str, Any]:
    try:
        meta = json.loads((folder / "task.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{folder / 'task.json'}: {exc}") from exc
    if not isinstance(meta, dict):
        raise ValueError(f"{folder / 'task.json'}: expected a JSON object")
    return meta


TaskCallback = Callable[[TaskReport], None]


def build_library(
    data_dir: str | Path,
    store: LibraryStore,
    encoder: Encoder,
    options: BuildOptions | None = None,
    on_progress: ProgressFn = no_progress,
    only: Iterable[str] | None = None,
    on_task: TaskCallback | None = None,
    on_task_progress: ProgressFn = no_progress,
) -> BuildReport:
    """Embed every task folder under data_dir into the store; skip sources that are already current.

    `on_progress(done, total)` counts tasks; `on_task_progress` follows the current task's embedding;
    `on_task(report)` is called after each task. A build record (the manifest) is appended to the store.
    """
    options = options or BuildOptions()
    folders = task_folders(data_dir, only)
    check_encoder(store, encoder)
    started = time.perf_counter()
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    reports: list[TaskReport] = []
    on_progress(0, len(folders))
    for i, folder in enumerate(folders):
        meta = _read_meta(folder)
        name = str(meta.get("name") or folder.name)
        dataset = load_dataset(folder, split="train", limits=_SOURCE_LIMITS)
        existing = store.get_task(name)
        if existing is not None and _is_current(store, existing, dataset.content_hash, encoder, options):
            report = TaskReport(
                name, "skipped", 0.0, int(_build_info(existing).get("rows_used", 0)), existing.task_type
            )
        else:
            provenance = {
                "source": meta.get("source", ""),
                "license_note": meta.get("license_note", ""),
                "notes": meta.get("notes", ""),
                "folder": folder.name,
            }
            _, report = add_source(
                store,
                dataset,
                encoder,
                options,
                name=name,
                num_train=int(meta.get("num_train", len(dataset))),
                num_dev=int(meta["num_dev"]) if meta.get("num_dev") is not None else None,
                description=str(meta.get("description", "")),
                provenance=provenance,
                replace_existing=True,
                on_progress=on_task_progress,
            )
        reports.append(report)
        if on_task is not None:
            on_task(report)
        on_progress(i + 1, len(folders))
    seconds = time.perf_counter() - started
    build_report = BuildReport(
        tasks=reports,
        seconds=round(seconds, 3),
        model_name=encoder.name,
        model_hash=encoder.weights_hash,
        options=options.identity(),
        library_version=store.version(),
    )
    build_report.build_id = store.record_build(
        {
            "kind": "build",
            "data_dir": str(Path(data_dir).resolve()),
            "started_at": started_at,
            "seconds": build_report.seconds,
            "model_name": encoder.name,
            "model_hash": encoder.weights_hash,
            "options": build_report.options,
            "options_hash": options.options_hash,
            "taskrank_version": taskrank_version(),
            "versions": library_versions(),
            "device": str(encoder.device),
            "library_version": build_report.library_version,
            "tasks": [asdict(t) for t in reports],
        }
    )
    return build_report
