"""Rank the library's source tasks for a target: the search under every registered ranking method.

The methods themselves live in `library.methods` (one module each, one registry); this module owns
what they share: the eligible sources, the per-embedding FAISS search, and the result types.

TextEmb and SEmb rank by the (library-centred, by default) cosine similarity of one vector. TaskEmb has one vector per Fisher
component; each component ranks the sources and the rankings are fused with reciprocal rank fusion
(RRF, k=60), which needs no score calibration across components. The ensemble fuses the TextEmb,
SEmb and fused TaskEmb rankings the same way.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from embeddings.result import EmbeddingResult
from library.errors import LibraryError
from library.index import DEFAULT_SIMILARITY, IndexKind, LibraryIndexes, Similarity
from library.methods import RANKING_METHODS, Entry, RankContext, TargetRows, assign_ranks, rrf
from library.store import LibraryStore, SourceTask


@dataclass(frozen=True)
class RankingTarget:
    name: str
    hash: str
    task_type: str


@dataclass
class RankedSource:
    name: str
    task_type: str
    num_train: int
    score: float  # fused RRF score; the similarity for textemb / semb
    rank: int  # 1-based
    details: dict[str, dict[str, Any]] = field(default_factory=dict)  # part -> {"rank", "similarity"}


@dataclass
class Ranking:
    method: str
    model_name: str
    library_version: str
    target: RankingTarget
    sources: list[RankedSource]
    info: dict[str, Any] = field(default_factory=dict)  # from the method (the learned ranker's version, ...)
    notes: list[str] = field(default_factory=list)  # what the user should know, e.g. sources a method left out

    def names(self) -> list[str]:
        return [s.name for s in self.sources]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class SourceLibrary:
    """The ranking entry point: a store plus its (lazily rebuilt) FAISS indexes."""

    def __init__(
        self,
        store: LibraryStore,
        index_dir: str | Path,
        kind: IndexKind = "flat",
        similarity: Similarity = DEFAULT_SIMILARITY,
        **index_kwargs: Any,
    ):
        self.store = store
        self.indexes = LibraryIndexes(store, index_dir, kind=kind, similarity=similarity, **index_kwargs)

    def rank(
        self,
        targets: dict[str, EmbeddingResult],
        method: str,
        top_k: int = 10,
        all_class: bool = False,
        exclude_hash: str | None = None,
        rows: TargetRows | None = None,
        dataset: Any = None,
    ) -> Ranking:
        """Rank sources for the target embedded under `targets[method]` (ensemble: all three methods).

        Filters: same task_type as the target unless `all_class`; never the target itself (a source
        whose data_hash is the target's dataset_hash, or `exclude_hash`). All matching sources are
        ranked, then fused, then cut to `top_k`.
        """
        spec = RANKING_METHODS.get(method)
        if top_k < 1:
            raise LibraryError("top_k must be at least 1")
        if spec.needs_rows and rows is None:
            raise LibraryError(f"ranking by {method} needs the target's labelled rows, not only its embeddings")
        needed = spec.needs
        missing = [m for m in needed if m not in targets]
        if missing:
            if len(needed) > 1:
                what = f"the {method} needs the target embedded with {', '.join(needed)}"
            else:
                what = f"ranking by {method} needs the target's {needed[0]} embedding"
            raise LibraryError(f"{what}; missing: {', '.join(missing)}")
        parts = {m: targets[m] for m in needed}
        for m, result in parts.items():
            if result.method != m:
                raise LibraryError(f"targets[{m!r}] is a {result.method!r} embedding")
        if parts:
            target = self._target(parts)
        elif rows is not None:  # a method that reads only the target's rows
            target = RankingTarget(name=rows.dataset.name, hash=rows.target_hash or exclude_hash or "",
                                   task_type=rows.dataset.task_type.value)
        else:
            raise LibraryError(f"ranking by {method} needs the target's embeddings or rows")

        version = self.store.version()
        excluded = {h.lower() for h in (target.hash, exclude_hash) if h}
        eligible = {
            t.id: t
            for t in self.store.list_tasks()
            if (all_class or spec.ranks_all or t.task_type == target.task_type) and t.data_hash not in excluded
        }

        per_embedding: dict[tuple[str, str], list[Entry]] = {}

        def by_embedding(part: str, against: str | None = None) -> list[Entry]:
            """Each embedding's ranking once per request, however many times a method asks for it.

            `against`: search the library's vectors of this method (a library-side variant of `part`).
            """
            key = (part, against or part)
            if key not in per_embedding:
                if part not in parts:
                    raise LibraryError(f"the {method} method asked for {part!r}, which it does not list in needs")
                per_embedding[key] = self._rank_method(parts[part], eligible, against)
            return [replace(e, details=dict(e.details)) for e in per_embedding[key]]

        context = RankContext(targets=parts, eligible=eligible, by_embedding=by_embedding, rows=rows,
                              store=self.store, dataset=dataset)
        entries = spec.rank(context)
        if spec.ranks_all and not all_class:
            entries = [e for e in entries if e.task.task_type == target.task_type]
            for rank, e in enumerate(entries, start=1):
                e.rank = rank

        sources = [
            RankedSource(
                name=e.task.name,
                task_type=e.task.task_type,
                num_train=e.task.num_train,
                score=e.score,
                rank=e.rank,
                details=e.details,
            )
            for e in entries[:top_k]
        ]
        model_names = sorted({r.model_name for r in parts.values()} or ({rows.encoder.name} if rows else set()))
        return Ranking(
            method=method,
            model_name=",".join(model_names),
            library_version=version,
            target=target,
            sources=sources,
            info=context.info,
            notes=list(context.notes),
        )

    @staticmethod
    def _target(parts: dict[str, EmbeddingResult]) -> RankingTarget:
        first = next(iter(parts.values()))
        for result in parts.values():
            if (result.dataset_hash, result.task_type) != (first.dataset_hash, first.task_type):
                raise LibraryError(
                    "the target embeddings disagree on dataset hash or task type: embed one dataset"
                )
        return RankingTarget(name=first.dataset_name, hash=first.dataset_hash, task_type=first.task_type)

    def _rank_method(self, result: EmbeddingResult, eligible: dict[int, SourceTask],
                     against: str | None = None) -> list[Entry]:
        """One embedding's ranking: a single vector as is, TaskEmb's components fused by RRF.

        `against`: the library method whose vectors are searched (default the target's own method).
        """
        library_method = against or result.method
        if result.method != "taskemb":
            if len(result.vectors) != 1:
                raise LibraryError(
                    f"a {result.method} target must have exactly one vector, got {result.components}"
                )
            component = result.components[0]
            entries = self._rank_component(result, component, eligible, library_method)
            for e in entries:
                e.details = {component: {"rank": e.rank, "similarity": e.similarity}}
            return entries
        components = self._taskemb_components(result, library_method)
        return rrf({c: self._rank_component(result, c, eligible, library_method) for c in components})

    def _taskemb_components(self, result: EmbeddingResult, library_method: str = "taskemb") -> list[str]:
        """Components both the target and the library have (a library built with fewer layers still works)."""
        library = {
            k.component
            for k in self.store.keys()
            if k.method == library_method and k.model_name == result.model_name
        }
        if not library:
            others = sorted(
                {f"{k.model_name} (hash {k.model_hash})" for k in self.store.keys() if k.method == library_method}
            )
            if others:
                raise LibraryError(
                    f"library built with model {others[0]}, target embedded with {result.model_name} "
                    f"(hash {result.model_hash}): re-embed the target with the library's model"
                )
            raise LibraryError(f"the library has no {library_method} embeddings")
        shared = sorted(set(result.vectors) & library)
        if not shared:
            raise LibraryError(
                f"no taskemb component in common: target has {sorted(result.vectors)}, library has {sorted(library)}"
            )
        return shared

    def _rank_component(
        self, result: EmbeddingResult, component: str, eligible: dict[int, SourceTask],
        library_method: str | None = None,
    ) -> list[Entry]:
        vector = result.vectors[component]
        index = self.indexes.for_target(
            result.model_name, result.model_hash, library_method or result.method, component, int(vector.shape[0])
        )
        ids, sims = index.search(vector, index.ntotal)  # exact ranking over the whole (small) library
        entries = [
            Entry(task=eligible[i], score=float(s), similarity=float(s))
            for i, s in zip(ids.tolist(), sims.tolist(), strict=True)
            if i in eligible
        ]
        return assign_ranks(entries)
