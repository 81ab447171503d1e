"""The library as the CLI, the worker and the web service use it.

`LibraryService` opens the store and its indexes from settings, imports the shipped default library
into an empty store on first use, loads the encoder lazily, ranks a dataset through the one ranking
pipeline (`library.pipeline.rank_target`, with the target-embedding cache under the data directory)
and evaluates rankings against a transfer table using the stored embeddings of the table's targets.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from embeddings.data import Dataset
from embeddings.encoders import Encoder
from embeddings.options import ProgressFn, no_progress
from embeddings.result import EmbeddingResult
from library.bundle import ImportReport, ensure_default_library
from library.errors import LibraryError
from library.evaluation import TransferTable, evaluate
from library.index import DEFAULT_SIMILARITY, IndexKind, Similarity
from library.logme_evidence import FILE_NAME as EVIDENCE_FILE
from library.logme_evidence import EvidenceStore, shipped_evidence_path
from library.methods import RANKING_METHODS, TargetRows
from library.pipeline import rank_target
from library.ranking import Ranking, SourceLibrary
from library.settings import Settings
from library.store import LibraryStore, SourceTask
from library.target_cache import TargetEmbeddingCache


@dataclass
class LibraryService:
    store: LibraryStore
    index_dir: Path
    model: str = "default"
    device: str = "auto"
    token_budget: int = 0
    index_kind: IndexKind = "flat"
    hnsw_ef_search: int = 512
    similarity: Similarity = DEFAULT_SIMILARITY
    cache_dir: Path | None = None  # the target-embedding cache; None: embed every time
    checkpoint_dirs: tuple[Path, ...] = ()  # fine-tuned source encoders (exact LogME)
    source_data_dir: Path | None = None  # the sources' task folders (evaluation reads targets' rows there)
    evidence_path: Path | None = None  # exact LogME values computed here (`library.logme_evidence`)
    default_import: ImportReport | None = None
    _library: SourceLibrary | None = field(default=None, repr=False)
    _encoder: Encoder | None = field(default=None, repr=False)
    _cache: TargetEmbeddingCache | None = field(default=None, repr=False)
    _evidence: EvidenceStore | None = field(default=None, repr=False)

    @classmethod
    def from_settings(cls, settings: Settings, ensure_default: bool = True) -> LibraryService:
        """Store at `settings.resolved_database_url`, indexes and caches under `settings.data_dir`."""
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        store = LibraryStore(settings.resolved_database_url)
        service = cls(
            store=store,
            index_dir=settings.paths.indexes,
            model=settings.model,
            device=settings.device,
            token_budget=settings.max_tokens_per_batch,
            index_kind=settings.index_kind,
            hnsw_ef_search=settings.hnsw_ef_search,
            similarity=settings.similarity,
            cache_dir=settings.paths.embeddings,
            checkpoint_dirs=(settings.paths.checkpoints,),
            evidence_path=settings.paths.embeddings / EVIDENCE_FILE,
            source_data_dir=settings.paths.source_data_root(settings.shared_data_dir),
        )
        if ensure_default:
            service.default_import = ensure_default_library(store)
        return service

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> LibraryService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def library(self) -> SourceLibrary:
        if self._library is None:
            extra = {"ef_search": self.hnsw_ef_search} if self.index_kind == "hnsw" else {}
            self._library = SourceLibrary(
                self.store, self.index_dir, kind=self.index_kind, similarity=self.similarity, **extra
            )
        return self._library

    @property
    def encoder(self) -> Encoder:
        if self._encoder is None:
            from embeddings.encoders import load_encoder

            self._encoder = load_encoder(self.model, self.device)
        return self._encoder

    def rank(
        self,
        dataset: Dataset,
        method: str | None = None,
        top_k: int = 10,
        all_class: bool = False,
        on_progress: ProgressFn = no_progress,
        on_stage: Callable[[str], None] | None = None,
    ) -> Ranking:
        """Rank the library's sources for `dataset` by `method` (None: the default for this target,
        `library.ranker.default_for`, whose note, if any, joins the ranking's notes)."""
        note = None
        if method is None:
            from library.ranker import default_for
            from library.ranker_store import RankerStore

            method, note = default_for(RankerStore.for_engine(self.store.engine), dataset.task_type.value,
                                       self.store)
        ranking = rank_target(dataset, self.library, self.encoder, method, top_k, all_class, on_progress,
                              self.token_budget, cache=self.cache, on_stage=on_stage,
                              checkpoint_dirs=self.checkpoint_dirs, evidence=self.evidence)
        if note:
            ranking.notes.insert(0, note)
        return ranking

    def default_method(self) -> str:
        """`learned` once its active version validated as the default may be (`library.ranker.criteria`),
        else `library.methods.DEFAULT_METHOD`."""
        from library.ranker import default_method
        from library.ranker_store import RankerStore

        return default_method(RankerStore.for_engine(self.store.engine))

    @property
    def evidence(self) -> EvidenceStore:
        """Exact LogME values: those computed here (`evidence_path`), then the shipped library's."""
        if self._evidence is None:
            self._evidence = EvidenceStore(self.evidence_path, shipped=(shipped_evidence_path(),))
        return self._evidence

    @property
    def cache(self) -> TargetEmbeddingCache | None:
        if self._cache is None and self.cache_dir is not None:
            self._cache = TargetEmbeddingCache(self.cache_dir)
        return self._cache

    def evaluate(
        self, table: TransferTable, methods: Sequence[str] | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        return evaluate_transfer_table(self.library, table, methods, rows_for=self.target_rows, **kwargs)

    def target_rows(self, name: str) -> TargetRows | None:
        """A library task's labelled training rows (the library's cap and seed), from its task folder."""
        if self.source_data_dir is None or not (self.source_data_dir / name / "task.json").is_file():
            return None
        from embeddings.data import LoadLimits, load_dataset
        from library.pipeline import ranking_options, rows_key

        options = ranking_options(self.store, self.encoder, self.token_budget)
        dataset = load_dataset(self.source_data_dir / name, limits=LoadLimits(max_rows=10**7))
        sample = dataset.subsample(options.max_rows, options.seed)
        return TargetRows(dataset=sample, encoder=self.encoder, embed_options=options.embed_options(),
                          store=self.store, checkpoint_dirs=self.checkpoint_dirs,
                          rows_key=rows_key(options, sample), evidence=self.evidence)


def stored_targets(store: LibraryStore, task: SourceTask) -> dict[str, EmbeddingResult]:
    """A library task's stored embeddings as ranking targets (method -> EmbeddingResult)."""
    by_method: dict[str, dict[str, Any]] = {}
    for e in store.task_embeddings(task.id):
        entry = by_method.setdefault(
            e.method, {"model_name": e.model_name, "model_hash": e.model_hash, "vectors": {}}
        )
        if (entry["model_name"], entry["model_hash"]) == (e.model_name, e.model_hash):
            entry["vectors"][e.component] = e.vector
    return {
        method: EmbeddingResult(
            method=method,
            vectors=entry["vectors"],
            model_name=entry["model_name"],
            model_hash=entry["model_hash"],
            dataset_name=task.name,
            dataset_hash=task.data_hash,
            task_type=task.task_type,
            num_examples=0,
            num_features=0,
            num_tokens=0,
        )
        for method, entry in by_method.items()
    }


def evaluate_transfer_table(
    library: SourceLibrary,
    table: TransferTable,
    methods: Sequence[str] | None = None,
    rows_for: Callable[[str], TargetRows | None] | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Rank, for every target of the table, the sources measured for it, with each method; then score.

    Methods that read the target's labelled rows (LogME, ESM-LogME) get them from `rows_for(target)`;
    a method that cannot rank some target (no rows, no maps, no checkpoints) is left out of the
    scores and listed under "skipped_methods" with the reason, rather than failing the evaluation.

    A trained method (the learned ranker) is left out by default: the table's targets may be its training
    rows; its own figures are leave-one-target-out (`library.ranker.validate`).

    Targets must be library tasks (their stored embeddings are the query). All classes are ranked
    (the table decides which sources count); the target itself is excluded by its data hash. Measured
    sources that are not in the library count as ranked last (see `library.evaluation`); they are
    listed under "missing_sources". Adds the random and DataSize (num_train) baselines.
    """
    methods = list(methods) if methods is not None else [m.name for m in RANKING_METHODS if not m.trained]
    store = library.store
    tasks = {t.name: t for t in store.list_tasks()}
    unknown = [t for t in table.targets() if t not in tasks]
    if unknown:
        raise LibraryError(
            f"target(s) {', '.join(unknown)} of the transfer table are not library tasks: "
            "add them with `taskrank library add` first"
        )
    rankings: dict[str, dict[str, list[str]]] = {m: {} for m in methods}
    missing: dict[str, list[str]] = {}
    skipped: dict[str, str] = {}
    notes: dict[str, dict[str, str]] = {}
    unscored: dict[str, dict[str, list[str]]] = {}  # method -> target -> measured sources it could not score
    for target in table.targets():
        stored = stored_targets(store, tasks[target])
        for method in methods:
            if method in skipped:
                continue
            spec = RANKING_METHODS.get(method)
            needed = spec.needs
            if any(m not in stored for m in needed):
                raise LibraryError(f"library task {target!r} has no {', '.join(needed)} embeddings")
            rows = rows_for(target) if spec.needs_rows and rows_for is not None else None
            try:
                ranking = library.rank({m: stored[m] for m in needed}, method, top_k=max(len(tasks), 1),
                                       all_class=True, rows=rows)
            except LibraryError as exc:
                if not (spec.needs_rows or spec.needs_library):
                    raise
                skipped[method] = f"{target}: {exc}"
                continue
            rankings[method][target] = ranking.names()
            left_out = [s for s in table.sources(target) if s in tasks and s not in ranking.names()]
            if left_out:  # measured sources the method could not score (no vectors, map or checkpoint)
                unscored.setdefault(method, {})[target] = left_out
                lacking = (f"no {', '.join(spec.needs_library)} vectors" if spec.needs_library else
                           "nothing this method scores them with here (an ESM map, or for logme a cached checkpoint "
                           "or recorded evidence)")
                notes.setdefault(method, {})[target] = (
                    f"{method}: measured source(s) {', '.join(left_out)} have {lacking} and count as ranked last")
        gone = [s for s in table.sources(target) if s not in tasks]
        if gone:
            missing[target] = gone
    sizes: Mapping[str, int] = {name: t.num_train for name, t in tasks.items()}
    for method in skipped:
        rankings.pop(method, None)
    result = evaluate(table, rankings, source_sizes=sizes, **kwargs)
    result["skipped_methods"] = skipped
    result["method_notes"] = {m: n for m, n in notes.items() if m not in skipped}
    result["unscored_sources"] = {m: u for m, u in unscored.items() if m not in skipped}
    result["missing_sources"] = missing
    result["library_version"] = store.version()
    return result
