"""Rank the library's source tasks for a target by embedding similarity (Vu et al. 2020).

TextEmb and SEmb rank by the (library-centred, by default) cosine similarity of one vector. TaskEmb has one vector per Fisher
component; each component ranks the sources and the rankings are fused with reciprocal rank fusion
(RRF, k=60), which needs no score calibration across components. The ensemble fuses the TextEmb,
SEmb and fused TaskEmb rankings the same way.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from embeddings.result import EmbeddingResult
from library.errors import LibraryError
from library.index import IndexKind, LibraryIndexes, Similarity
from library.store import LibraryStore, SourceTask

RRF_K = 60
SINGLE_METHODS = ("textemb", "semb")
RANK_METHODS = ("textemb", "semb", "taskemb", "ensemble")
ENSEMBLE_PARTS = ("textemb", "semb", "taskemb")


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
    details: dict[str, dict[str, float | int]] = field(default_factory=dict)  # part -> {"rank", "similarity"}


@dataclass
class Ranking:
    method: str
    model_name: str
    library_version: str
    target: RankingTarget
    sources: list[RankedSource]

    def names(self) -> list[str]:
        return [s.name for s in self.sources]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Entry:
    """One source's place in one ranking (a component, a method, or a fusion)."""

    task: SourceTask
    score: float
    similarity: float
    rank: int = 0
    details: dict[str, dict[str, float | int]] = field(default_factory=dict)


def _assign_ranks(entries: list[_Entry]) -> list[_Entry]:
    """Best score first; equal scores are ordered by name, so the output is deterministic."""
    entries.sort(key=lambda e: (-e.score, e.task.name))
    for rank, entry in enumerate(entries, start=1):
        entry.rank = rank
    return entries


def rrf(rankings: dict[str, list[_Entry]], k: int = RRF_K) -> list[_Entry]:
    """Reciprocal rank fusion: score = sum over rankings of 1 / (k + rank), rank 1-based.

    `math.fsum` makes the sum exact-then-rounded, so equal rank multisets tie exactly and the
    name tie-break applies. `similarity` of the fused entry is the mean of the parts'.
    """
    by_id: dict[int, list[tuple[str, _Entry]]] = {}
    for part, entries in rankings.items():
        for e in entries:
            by_id.setdefault(e.task.id, []).append((part, e))
    fused = []
    for parts in by_id.values():
        task = parts[0][1].task
        fused.append(
            _Entry(
                task=task,
                score=math.fsum(1.0 / (k + e.rank) for _, e in parts),
                similarity=math.fsum(e.similarity for _, e in parts) / len(parts),
                details={part: {"rank": e.rank, "similarity": e.similarity} for part, e in sorted(parts)},
            )
        )
    return _assign_ranks(fused)


class SourceLibrary:
    """The ranking entry point: a store plus its (lazily rebuilt) FAISS indexes."""

    def __init__(
        self,
        store: LibraryStore,
        index_dir: str | Path,
        kind: IndexKind = "flat",
        similarity: Similarity = "centred",
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
    ) -> Ranking:
        """Rank sources for the target embedded under `targets[method]` (ensemble: all three methods).

        Filters: same task_type as the target unless `all_class`; never the target itself (a source
        whose data_hash is the target's dataset_hash, or `exclude_hash`). All matching sources are
        ranked, then fused, then cut to `top_k`.
        """
        if method not in RANK_METHODS:
            raise LibraryError(
                f"unknown ranking method {method!r}; expected one of {', '.join(RANK_METHODS)}"
            )
        if top_k < 1:
            raise LibraryError("top_k must be at least 1")
        needed = ENSEMBLE_PARTS if method == "ensemble" else (method,)
        missing = [m for m in needed if m not in targets]
        if missing:
            if method == "ensemble":
                what = "the ensemble needs the target embedded with textemb, semb and taskemb"
            else:
                what = f"ranking by {method} needs the target's {method} embedding"
            raise LibraryError(f"{what}; missing: {', '.join(missing)}")
        parts = {m: targets[m] for m in needed}
        for m, result in parts.items():
            if result.method != m:
                raise LibraryError(f"targets[{m!r}] is a {result.method!r} embedding")
        target = self._target(parts)

        version = self.store.version()
        excluded = {h.lower() for h in (target.hash, exclude_hash) if h}
        eligible = {
            t.id: t
            for t in self.store.list_tasks()
            if (all_class or t.task_type == target.task_type) and t.data_hash not in excluded
        }

        per_method = {m: self._rank_method(result, eligible) for m, result in parts.items()}
        if method == "ensemble":
            entries = rrf({m: per_method[m] for m in ENSEMBLE_PARTS})
        else:
            entries = per_method[method]

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
        model_names = sorted({r.model_name for r in parts.values()})
        return Ranking(
            method=method,
            model_name=",".join(model_names),
            library_version=version,
            target=target,
            sources=sources,
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

    def _rank_method(self, result: EmbeddingResult, eligible: dict[int, SourceTask]) -> list[_Entry]:
        """One method's ranking: a single component as is, TaskEmb's components fused by RRF."""
        if result.method in SINGLE_METHODS:
            if len(result.vectors) != 1:
                raise LibraryError(
                    f"a {result.method} target must have exactly one vector, got {result.components}"
                )
            component = result.components[0]
            entries = self._rank_component(result, component, eligible)
            for e in entries:
                e.details = {component: {"rank": e.rank, "similarity": e.similarity}}
            return entries
        components = self._taskemb_components(result)
        return rrf({c: self._rank_component(result, c, eligible) for c in components})

    def _taskemb_components(self, result: EmbeddingResult) -> list[str]:
        """Components both the target and the library have (a library built with fewer layers still works)."""
        library = {
            k.component
            for k in self.store.keys()
            if k.method == "taskemb" and k.model_name == result.model_name
        }
        if not library:
            others = sorted(
                {f"{k.model_name} (hash {k.model_hash})" for k in self.store.keys() if k.method == "taskemb"}
            )
            if others:
                raise LibraryError(
                    f"library built with model {others[0]}, target embedded with {result.model_name} "
                    f"(hash {result.model_hash}): re-embed the target with the library's model"
                )
            raise LibraryError("the library has no taskemb embeddings")
        shared = sorted(set(result.vectors) & library)
        if not shared:
            raise LibraryError(
                f"no taskemb component in common: target has {sorted(result.vectors)}, library has {sorted(library)}"
            )
        return shared

    def _rank_component(
        self, result: EmbeddingResult, component: str, eligible: dict[int, SourceTask]
    ) -> list[_Entry]:
        vector = result.vectors[component]
        index = self.indexes.for_target(
            result.model_name, result.model_hash, result.method, component, int(vector.shape[0])
        )
        ids, sims = index.search(vector, index.ntotal)  # exact ranking over the whole (small) library
        entries = [
            _Entry(task=eligible[i], score=float(s), similarity=float(s))
            for i, s in zip(ids.tolist(), sims.tolist(), strict=True)
            if i in eligible
        ]
        return _assign_ranks(entries)
