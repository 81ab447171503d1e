"""2-D maps of the library's task space (PCA of task embeddings), like the figures of Vu et al. 2020.

`pca_2d` is plain numpy SVD with a deterministic sign convention. `library_map` projects every
source task that has vectors for a method, and, when given a ranking's target, the target too: the
PCA is fitted on the library alone, so a library's map is the same with or without a target.

Which vectors are drawn (the "basis"): TextEmb and SEmb their one vector, L2-normalised (the
rankings use cosine similarity); TaskEmb the concatenation of its L2-normalised Fisher components,
scaled to unit length; the ensemble the TextEmb vectors. `caption` says which.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from embeddings.registry import EMBEDDING_METHODS
from embeddings.result import EmbeddingResult
from library.build import library_options
from library.errors import LibraryError
from library.methods import RANKING_METHODS
from library.store import LibraryStore
from library.target_cache import find_target_embedding


def map_methods() -> tuple[str, ...]:
    """Every ranking method can be mapped: by its `map_basis` vectors (the registry decides)."""
    return RANKING_METHODS.names()


def _basis(method: str) -> str:
    if method in EMBEDDING_METHODS:
        return method
    return RANKING_METHODS.get(method).map_basis


def _caption(method: str) -> str:
    basis = _basis(method)
    caption = EMBEDDING_METHODS[basis].map_caption
    if method != basis:
        return f"{RANKING_METHODS.get(method).label} fuses rankings, not vectors: " + caption
    return caption


@dataclass(frozen=True)
class Projection:
    """A fitted 2-D PCA: `transform(x) = (x - mean) @ components.T`."""

    mean: np.ndarray  # (dim,)
    components: np.ndarray  # (2, dim); rows are unit length, or zero where the data has no such direction
    explained: np.ndarray  # (2,) fraction of the variance along each axis

    def transform(self, matrix: np.ndarray) -> np.ndarray:
        x = np.atleast_2d(np.asarray(matrix, dtype=np.float64))
        return (x - self.mean) @ self.components.T


def fit_pca_2d(matrix: np.ndarray) -> Projection:
    """Fit the top two principal axes of the rows of `matrix`.

    Sign convention: each axis is flipped so that its largest-magnitude loading is positive (ties:
    the first such coordinate), so the same data always gives the same picture. Fewer than two
    directions of variance (one row, identical rows, one column) leave the missing axes at zero.
    """
    x = np.asarray(matrix, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"pca_2d expects a 2-D matrix, got shape {x.shape}")
    n, dim = x.shape
    mean = x.mean(axis=0) if n else np.zeros(dim)
    components = np.zeros((2, dim))
    explained = np.zeros(2)
    if n >= 2 and dim >= 1:
        centred = x - mean
        _, singular, vt = np.linalg.svd(centred, full_matrices=False)
        total = float(np.sum(singular**2))
        tol = max(n, dim) * np.finfo(np.float64).eps * (singular[0] if singular.size else 0.0)
        for axis in range(min(2, vt.shape[0])):
            if singular[axis] <= tol:
                break
            vec = vt[axis]
            pivot = int(np.argmax(np.abs(vec)))
            components[axis] = vec if vec[pivot] >= 0 else -vec
            explained[axis] = float(singular[axis] ** 2 / total) if total > 0 else 0.0
    return Projection(mean=mean, components=components, explained=explained)


def pca_2d(matrix: np.ndarray) -> np.ndarray:
    """The rows of `matrix` projected on their top two principal axes: an (n, 2) float64 array."""
    return fit_pca_2d(matrix).transform(matrix) if len(matrix) else np.zeros((0, 2))


def _unit_rows(matrix: np.ndarray) -> np.ndarray:
    x = np.asarray(matrix, dtype=np.float64)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


@dataclass(frozen=True)
class LibraryVectors:
    """The library's vectors for one basis method: rows aligned with `task_ids`."""

    method: str  # the basis: textemb, semb or taskemb
    model_name: str
    model_hash: str
    components: list[str]
    widths: list[int]  # dimension of each component
    task_ids: list[int]
    matrix: np.ndarray  # float64 (n, dim), rows unit length

    def vector_for(self, result: EmbeddingResult) -> np.ndarray | None:
        """A target embedding in this basis; None when it lacks a component or has other dimensions."""
        parts = []
        for component, width in zip(self.components, self.widths, strict=True):
            vec = result.vectors.get(component)
            if vec is None or vec.shape != (width,) or not np.all(np.isfinite(vec)):
                return None
            parts.append(_unit_rows(vec))
        joined = np.concatenate(parts) / math.sqrt(len(parts))
        return joined if np.any(joined) else None


def _pick_model(store: LibraryStore, method: str, preferred: str | None) -> str | None:
    """The preferred model when the library has vectors of it for `method`, else the most common one."""
    counts: dict[str, int] = {}
    for key in store.keys():
        if key.method == method:
            counts[key.model_name] = max(counts.get(key.model_name, 0),
                                         len(store.embedding_ids(key.model_name, method, key.component)))
    if not counts:
        return None
    if preferred:
        for name in [preferred, *preferred.split(",")]:
            if name in counts:
                return name
    return max(sorted(counts), key=lambda name: counts[name])


def library_vectors(store: LibraryStore, method: str, model_name: str | None = None) -> LibraryVectors | None:
    """Unit-length library vectors for a map of `method` (the ensemble maps TextEmb); None if there are none."""
    if method not in RANKING_METHODS and method not in EMBEDDING_METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(map_methods())}")
    basis = _basis(method)
    model = _pick_model(store, basis, model_name)
    if model is None:
        return None
    available = sorted({k.component for k in store.keys() if k.model_name == model and k.method == basis})
    sets = {c: store.embedding_set(model, basis, c) for c in available}
    holders = {c: {int(i) for i in es.ids} for c, es in sets.items()}
    everyone = set().union(*holders.values())
    # TaskEmb components differ by task type (a tagger has no cls_output): use those every task has,
    # else the one most tasks have, so every task that can be drawn is drawn.
    components = [c for c in available if holders[c] == everyone]
    if not components:
        components = [max(available, key=lambda c: (len(holders[c]), c))]
    task_ids = sorted(set.intersection(*(holders[c] for c in components)))
    if not task_ids:
        return None
    chosen = [sets[c] for c in components]
    blocks = []
    for es in chosen:
        row_of = {int(t): r for r, t in enumerate(es.ids)}
        blocks.append(_unit_rows(es.matrix[[row_of[t] for t in task_ids]]))
    matrix = np.concatenate(blocks, axis=1) / math.sqrt(len(blocks))
    return LibraryVectors(method=basis, model_name=model, model_hash=chosen[0].model_hash, components=components,
                          widths=[es.dimension for es in chosen], task_ids=task_ids, matrix=matrix)


def library_map(store: LibraryStore, method: str = "textemb", *, model_name: str | None = None,
                target: dict[str, Any] | None = None, data_dir: str | Path | None = None) -> dict[str, Any]:
    """Points for every library task with vectors for `method`, and the projected target when found.

    `target` is a ranking's target (`{"name", "hash", "task_type"}`); its vector is looked up in the
    worker's embedding cache under `data_dir`. When it is not there (cache cleared, other model),
    `target` in the answer is None and `target_note` says why.
    """
    tasks = {t.id: t for t in store.list_tasks()}
    vectors = library_vectors(store, method, model_name)
    basis = _basis(method)
    answer: dict[str, Any] = {
        "method": method, "basis": basis, "model_name": None, "components": [],
        "caption": _caption(method).format(n=0), "explained_variance": [0.0, 0.0],
        "points": [], "missing": sorted(t.name for t in tasks.values()), "target": None, "target_note": None,
    }
    if vectors is None:
        if target is not None:
            answer["target_note"] = f"the library has no {basis} vectors"
        return answer
    projection = fit_pca_2d(vectors.matrix)
    xy = projection.transform(vectors.matrix)
    points = []
    for task_id, (x, y) in zip(vectors.task_ids, xy, strict=True):
        task = tasks.get(task_id)
        if task is None:  # removed between the two reads
            continue
        points.append({"id": task.id, "name": task.name, "task_type": task.task_type,
                       "num_train": task.num_train, "x": float(x), "y": float(y)})
    on_map = {p["id"] for p in points}
    answer.update(model_name=vectors.model_name, components=vectors.components,
                  caption=_caption(method).format(n=len(vectors.components)),
                  explained_variance=[round(float(v), 4) for v in projection.explained], points=points,
                  missing=sorted(t.name for t in tasks.values() if t.id not in on_map))
    if target is not None:
        answer["target"], answer["target_note"] = _target_point(store, vectors, projection, target, data_dir)
    return answer


def _options_hash(store: LibraryStore) -> str | None:
    """The library's embedding options hash (part of the worker's cache key), if it can be read."""
    try:
        options = library_options(store)
    except LibraryError:
        return None
    return options.options_hash if options is not None else None


def _target_point(store: LibraryStore, vectors: LibraryVectors, projection: Projection, target: dict[str, Any],
                  data_dir: str | Path | None) -> tuple[dict[str, Any] | None, str | None]:
    if data_dir is None:
        return None, "no embedding cache to read the target from"
    # A library-side variant (taskemb_ft) is searched with the target's own method's embedding.
    method = EMBEDDING_METHODS[vectors.method].target_method or vectors.method
    result = find_target_embedding(data_dir, str(target.get("hash") or ""), method, vectors.model_hash,
                                   _options_hash(store))
    if result is None:
        return None, "the target's embedding is not in the worker's cache"
    vec = vectors.vector_for(result)
    if vec is None:
        return None, "the target's cached embedding does not match the library's components"
    x, y = projection.transform(vec)[0]
    if not (math.isfinite(x) and math.isfinite(y)):
        return None, "the target's projection is not finite"
    return {"name": target.get("name") or "target", "task_type": target.get("task_type") or "",
            "x": float(x), "y": float(y)}, None
