"""What a ranking method is: a spec in one registry, and the pieces every method ranks with.

A ranking method turns a target's embeddings into an ordered list of library sources. Each method is
one module that builds a `RankingMethod` and one entry in `library.methods.BUILTIN`; everything that
offers methods to a user (API schema and enum, CLI choices, page labels, the ranking pipeline, the
task map) reads this registry, so adding a method changes nothing else.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from embeddings.registry import EMBEDDING_METHODS
from embeddings.result import EmbeddingResult
from library.errors import LibraryError
from library.store import SourceTask

RRF_K = 60
_NAME = re.compile(r"^[a-z][a-z0-9_]{1,31}$")


@dataclass
class Entry:
    """One source's place in one ranking (a component, a method, or a fusion)."""

    task: SourceTask
    score: float
    similarity: float
    rank: int = 0
    details: dict[str, dict[str, Any]] = field(default_factory=dict)


def assign_ranks(entries: list[Entry]) -> list[Entry]:
    """Best score first; equal scores are ordered by name, so the output is deterministic."""
    entries.sort(key=lambda e: (-e.score, e.task.name))
    for rank, entry in enumerate(entries, start=1):
        entry.rank = rank
    return entries


def rrf(rankings: Mapping[str, list[Entry]], k: int = RRF_K) -> list[Entry]:
    """Reciprocal rank fusion: score = sum over rankings of 1 / (k + rank), rank 1-based.

    `math.fsum` makes the sum exact-then-rounded, so equal rank multisets tie exactly and the
    name tie-break applies. `similarity` of the fused entry is the mean of the parts'.
    """
    by_id: dict[int, list[tuple[str, Entry]]] = {}
    for part, entries in rankings.items():
        for e in entries:
            by_id.setdefault(e.task.id, []).append((part, e))
    fused = []
    for parts in by_id.values():
        task = parts[0][1].task
        fused.append(
            Entry(
                task=task,
                score=math.fsum(1.0 / (k + e.rank) for _, e in parts),
                similarity=math.fsum(e.similarity for _, e in parts) / len(parts),
                details={part: {"rank": e.rank, "similarity": e.similarity} for part, e in sorted(parts)},
            )
        )
    return assign_ranks(fused)


@dataclass
class TargetRows:
    """A labelled target as rows, for methods that score the target's labels (LogME, ESM-LogME):
    the dataset subsampled the library's way, the encoder, the library's embedding options, the
    store (per-source maps) and where fine-tuned source encoders are cached."""

    dataset: Any  # embeddings.data.Dataset
    encoder: Any  # embeddings.encoders.Encoder
    embed_options: Any  # embeddings.options.EmbedOptions
    store: Any  # library.store.LibraryStore
    checkpoint_dirs: tuple[Any, ...] = ()
    target_hash: str = ""  # the full dataset's content hash (the rows are a subsample of it)
    features: Any = None  # np.ndarray (rows, H): the base encoder's pooled rows, when already computed
    rows_key: str = ""  # the row options the features depend on (`library.pipeline.rows_key`)
    evidence: Any = None  # library.logme_evidence.EvidenceStore: exact LogME values computed before

    def base_features(self) -> Any:
        """The base encoder's rows (SEmb's pooling; a token sample for sequence labelling), computed once."""
        if self.features is None:
            self.features = self.features_under(None)
        return self.features

    def features_under(self, state_dict: Any) -> Any:
        """The rows under the base encoder (None) or a fine-tuned encoder body's state dict."""
        from library.esm import row_features

        return row_features(self.dataset, self.encoder, state_dict, self.embed_options)

    def labels(self) -> tuple[Any, bool]:
        """(labels, regression) the rows are scored against: one per row (per sampled token when tagging)."""
        from library.esm import row_labels

        return row_labels(self.dataset, self.encoder, self.embed_options)


@dataclass
class RankContext:
    """What a method ranks with: the target's embeddings, the eligible sources, the library's search
    of one embedding (`by_embedding(method)`: a single vector's similarity ranking, or a
    multi-component embedding's components fused by RRF; `by_embedding(method, against=variant)`
    searches the library's vectors of a library-side variant such as `taskemb_ft` with the target's
    `method` embedding), and, for methods with `needs_rows`, the target's labelled rows. A method
    that leaves eligible sources out of its ranking says which, and why, in `notes` (shown to the user).
    """

    targets: Mapping[str, EmbeddingResult]
    eligible: Mapping[int, SourceTask]
    by_embedding: Callable[..., list[Entry]]
    rows: TargetRows | None = None
    notes: list[str] = field(default_factory=list)
    store: Any = None  # library.store.LibraryStore: the library's database (the learned ranker's versions)
    dataset: Any = None  # embeddings.data.Dataset: the whole target, when the caller has it (its size, labels)
    info: dict[str, Any] = field(default_factory=dict)  # what the method tells the ranking (Ranking.info)


@dataclass(frozen=True)
class RankingMethod:
    """One ranking method.

    `needs`: the embedding methods the target is embedded with (the pipeline computes and caches
    them); `needs_rows`: the method reads the target's labelled rows; `rank`: the ordered sources; `explain`: a short "why" for one ranked source from its
    `details`; `score_label`: what the score column means; `map_basis`: which library vectors the
    task map draws for a ranking by this method.
    """

    name: str
    label: str
    description: str
    needs: tuple[str, ...]
    rank: Callable[[RankContext], list[Entry]]
    explain: Callable[[Mapping[str, Mapping[str, Any]]], str]
    score_label: str = "similarity"
    map_basis: str = "textemb"
    needs_rows: bool = False  # the target's labelled rows (RankContext.rows), not only its embeddings
    # library-side embeddings it searches that a library may lack (built separately, e.g. taskemb_ft from the
    # sources' checkpoints): where they are missing the method fails with a clear error, and an evaluation skips it
    needs_library: tuple[str, ...] = ()
    wants_rows: bool = False  # the rows when the target has usable labels; ranks without them otherwise
    trained: bool = False  # fitted on measured transfers: `evaluate` leaves it out (in-sample there); its
    # figures are its own leave-one-target-out validation (`taskrank ranker fit`)
    ranks_all: bool = False  # ranks every library source (ctx.eligible: all but the target); the task-type
    # filter applies to its output, so its features do not depend on the filter
    needs_maps: tuple[str, ...] = ()  # kinds of per-source map it reads (`library.store.source_maps`, e.g. esm)
    needs_checkpoints: bool = False  # every source's fine-tuned checkpoint (or recorded evidence): not offline

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"ranking method name {self.name!r}: lower case letters, digits and _ (2-32)")
        unknown = [m for m in self.needs if m not in EMBEDDING_METHODS]
        if (not self.needs and not self.needs_rows) or unknown:
            raise ValueError(f"ranking method {self.name!r} needs unknown embedding methods {unknown} "
                             f"(known: {', '.join(EMBEDDING_METHODS)})")
        if any(m not in EMBEDDING_METHODS for m in self.needs_library):
            raise ValueError(f"ranking method {self.name!r}: needs_library {self.needs_library} are not all "
                             "embedding methods")
        if self.map_basis not in EMBEDDING_METHODS:
            raise ValueError(f"ranking method {self.name!r}: map_basis {self.map_basis!r} is not an embedding method")


class MethodRegistry:
    """The closed set of ranking methods, in the order they are offered."""

    def __init__(self) -> None:
        self._methods: dict[str, RankingMethod] = {}

    def register(self, method: RankingMethod) -> RankingMethod:
        if method.name in self._methods:
            raise ValueError(f"ranking method {method.name!r} is already registered")
        self._methods[method.name] = method
        return method

    def unregister(self, name: str) -> None:
        self._methods.pop(name, None)

    def get(self, name: str) -> RankingMethod:
        try:
            return self._methods[name]
        except KeyError:
            raise LibraryError(f"unknown ranking method {name!r}; expected one of {', '.join(self.names())}") from None

    def names(self) -> tuple[str, ...]:
        return tuple(self._methods)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._methods.values())

    def __contains__(self, name: object) -> bool:
        return name in self._methods


def similarity_explain(details: Mapping[str, Mapping[str, Any]]) -> str:
    """A single vector's ranking: its (library-centred by default) cosine."""
    part = next(iter(details.values()), {})
    return f"cos {float(part.get('similarity', math.nan)):.3f}"


def fusion_explain(details: Mapping[str, Mapping[str, Any]]) -> str:
    """A fusion's parts and the rank each gave the source."""
    return "  ".join(f"{part} {int(d['rank'])}" for part, d in details.items())
