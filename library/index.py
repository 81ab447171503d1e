"""FAISS indexes over the library's vectors, one per (model_name, method, component), cached on disk.

Vectors are L2-normalised, so inner product = cosine similarity. With `similarity="centred"` the
library's mean (of the normalised vectors) is subtracted from every vector and from the query, which
are then normalised again: the direction every task shares no longer decides the ranking, so tasks
near that mean stop being everybody's nearest neighbour ("hubs"; README, Selection quality). The
mean is stored in the sidecar, and any change of the library rebuilds the index, so the mean is
always the current library's. FAISS ids are source task ids.
The database stays the source of truth: an index file carries a JSON sidecar (library version,
task id -> embedding row id, checksum of the index bytes), and `LibraryIndexes` rebuilds any index
whose files are missing, corrupt or disagree with the database (e.g. after a crash between the
database commit and the index write).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import faiss
import numpy as np

from library.errors import LibraryError
from library.store import EmbeddingSet, LibraryStore

IndexKind = Literal["flat", "hnsw"]
Similarity = Literal["cosine", "centred"]
# The one default (Settings.similarity uses it): cosine after subtracting the library's mean vector.
DEFAULT_SIMILARITY: Similarity = "centred"
SIDECAR_FORMAT = 1


@dataclass
class IndexInfo:
    """What the index holds and how it was built; written as the JSON sidecar."""

    model_name: str
    model_hash: str
    method: str
    component: str
    dimension: int
    kind: IndexKind = "flat"
    similarity: Similarity = DEFAULT_SIMILARITY
    centre: list[float] | None = None  # "centred": the mean of the library's normalised vectors
    library_version: str = ""
    names: dict[int, str] = field(default_factory=dict)  # task id -> task name
    embedding_ids: dict[int, int] = field(default_factory=dict)  # task id -> task_embeddings row id

    def to_json(self, faiss_sha256: str, ntotal: int) -> dict[str, Any]:
        return {
            "format": SIDECAR_FORMAT,
            "kind": self.kind,
            "similarity": self.similarity,
            "centre": self.centre,
            "model_name": self.model_name,
            "model_hash": self.model_hash,
            "method": self.method,
            "component": self.component,
            "dimension": self.dimension,
            "library_version": self.library_version,
            "ntotal": ntotal,
            "ids": {str(i): n for i, n in sorted(self.names.items())},
            "embedding_ids": {str(i): e for i, e in sorted(self.embedding_ids.items())},
            "faiss_sha256": faiss_sha256,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> IndexInfo:
        if data.get("format") != SIDECAR_FORMAT:
            raise LibraryError(f"unsupported index sidecar format {data.get('format')!r}")
        return cls(
            model_name=data["model_name"],
            model_hash=data["model_hash"],
            method=data["method"],
            component=data["component"],
            dimension=int(data["dimension"]),
            kind=data["kind"],
            similarity=data.get("similarity", "cosine"),
            centre=data.get("centre"),
            library_version=data["library_version"],
            names={int(i): str(n) for i, n in data["ids"].items()},
            embedding_ids={int(i): int(e) for i, e in data.get("embedding_ids", {}).items()},
        )


def index_filename(model_name: str, method: str, component: str) -> str:
    """A filesystem-safe, collision-free stem: readable slug plus a hash of the exact key."""
    key = json.dumps([model_name, method, component])
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{model_name}__{method}__{component}").strip("._")[:120]
    return f"{slug}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def normalize_rows(matrix: np.ndarray) -> np.ndarray:
    """L2-normalise rows (float32 copy); zero rows have no direction and are rejected."""
    x = np.array(matrix, dtype=np.float32, copy=True)
    if x.ndim == 1:
        x = x[None, :]
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if np.any(norms == 0) or not np.all(np.isfinite(norms)):
        raise LibraryError("cannot normalise a zero or non-finite vector")
    x /= norms
    return np.ascontiguousarray(x)


class VectorIndex:
    """One FAISS index (exact `IndexFlatIP`, or approximate `IndexHNSWFlat` with inner product) in an `IndexIDMap2`."""

    def __init__(
        self, info: IndexInfo, *, hnsw_m: int = 32, ef_construction: int = 80, ef_search: int = 128
    ) -> None:
        if info.kind not in ("flat", "hnsw"):
            raise LibraryError(f"unknown index kind {info.kind!r}; expected 'flat' or 'hnsw'")
        if info.dimension <= 0:
            raise LibraryError("index dimension must be positive")
        self.info = info
        self.ef_search = ef_search
        self._hnsw = (hnsw_m, ef_construction)
        self.index = faiss.IndexIDMap2(self._make_inner())

    def _make_inner(self) -> faiss.Index:
        d = self.info.dimension
        if self.info.kind == "flat":
            return faiss.IndexFlatIP(d)
        m, ef_construction = self._hnsw
        inner = faiss.IndexHNSWFlat(d, m, faiss.METRIC_INNER_PRODUCT)
        inner.hnsw.efConstruction = ef_construction
        inner.hnsw.efSearch = self.ef_search
        return inner

    @classmethod
    def from_embedding_set(
        cls, es: EmbeddingSet, kind: IndexKind = "flat", similarity: Similarity = DEFAULT_SIMILARITY, **kwargs: Any
    ) -> VectorIndex:
        """Build from the database's vectors of one key."""
        if not len(es.ids):
            raise LibraryError(
                f"no source task has {es.method}/{es.component} embeddings from {es.model_name!r}"
            )
        info = IndexInfo(
            model_name=es.model_name,
            model_hash=es.model_hash,
            method=es.method,
            component=es.component,
            dimension=es.dimension,
            kind=kind,
            similarity=similarity,
            library_version=es.library_version,
        )
        if similarity == "centred" and len(es.ids) > 1:  # one vector minus itself has no direction
            info.centre = normalize_rows(es.matrix).mean(axis=0).tolist()
        index = cls(info, **kwargs)
        index.add(es.ids, es.matrix, names=es.names, embedding_ids=es.embedding_ids.tolist())
        return index

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def ids(self) -> np.ndarray:
        """Stored ids (int64), in FAISS's internal order."""
        return faiss.vector_to_array(self.index.id_map).astype(np.int64)

    def prepare(self, vectors: np.ndarray) -> np.ndarray:
        """What is stored or searched for a vector: normalised, then centred and normalised again.

        A vector that is the library's mean has no direction left once centred: it stays zero (its
        similarity to every source is 0) rather than being an error.
        """
        x = normalize_rows(vectors)
        if self.info.centre is None:
            return x
        x -= np.asarray(self.info.centre, dtype=np.float32)
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        x /= np.where(norms > 1e-6, norms, np.inf)
        return np.ascontiguousarray(x)

    def add(
        self,
        ids: np.ndarray | list[int],
        vectors: np.ndarray,
        *,
        names: list[str] | None = None,
        embedding_ids: list[int] | None = None,
    ) -> None:
        """Add vectors (prepared here) under the given ids; an id already present is an error."""
        ids_arr = np.asarray(ids, dtype=np.int64).reshape(-1)
        x = self.prepare(vectors)
        if x.shape != (len(ids_arr), self.info.dimension):
            raise LibraryError(
                f"expected {len(ids_arr)} vectors of dimension {self.info.dimension}, got {x.shape}"
            )
        if len(set(ids_arr.tolist())) != len(ids_arr) or set(ids_arr.tolist()) & set(self.ids().tolist()):
            raise LibraryError("duplicate ids: remove an id before adding it again")
        self.index.add_with_ids(x, ids_arr)
        for pos, i in enumerate(ids_arr.tolist()):
            self.info.names[i] = names[pos] if names is not None else str(i)
            if embedding_ids is not None:
                self.info.embedding_ids[i] = int(embedding_ids[pos])

    def remove(self, ids: np.ndarray | list[int]) -> int:
        """Remove ids; returns how many were present. HNSW cannot delete in place, so it is rebuilt."""
        drop = set(np.asarray(ids, dtype=np.int64).reshape(-1).tolist())
        if self.info.kind == "flat":
            # faiss's Python wrapper takes an id array; its stubs only declare remove_ids(IDSelector) here
            removed = int(self.index.remove_ids(np.fromiter(drop, dtype=np.int64, count=len(drop))))  # type: ignore[arg-type]
        else:
            current = self.ids()
            keep = np.array([i not in drop for i in current.tolist()], dtype=bool)
            removed = int((~keep).sum())
            if removed:
                vectors = self.index.index.reconstruct_n(0, self.ntotal)
                self.index = faiss.IndexIDMap2(self._make_inner())
                if keep.any():
                    self.index.add_with_ids(np.ascontiguousarray(vectors[keep]), current[keep])
        for i in drop:
            self.info.names.pop(i, None)
            self.info.embedding_ids.pop(i, None)
        return removed

    def check_compatible(self, model_name: str, model_hash: str, dimension: int) -> None:
        """A query must come from the same model (name and weights hash) and have the same dimension."""
        info = self.info
        if model_name != info.model_name or model_hash != info.model_hash:
            raise LibraryError(
                f"library built with model {info.model_name} (hash {info.model_hash}), target embedded with "
                f"{model_name} (hash {model_hash}): re-embed the target with {info.model_name}"
            )
        if dimension != info.dimension:
            raise LibraryError(
                f"{info.method}/{info.component}: library vectors have dimension {info.dimension}, "
                f"target has {dimension}: re-embed the target with {info.model_name}"
            )

    def search(
        self,
        query: np.ndarray,
        k: int,
        *,
        model_name: str | None = None,
        model_hash: str | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (ids, similarities), best first; pass model_name/model_hash to have them checked."""
        q = np.asarray(query, dtype=np.float32).reshape(-1)
        if model_name is not None or model_hash is not None:
            self.check_compatible(
                model_name if model_name is not None else self.info.model_name,
                model_hash if model_hash is not None else self.info.model_hash,
                q.shape[0],
            )
        elif q.shape[0] != self.info.dimension:
            raise LibraryError(f"query has dimension {q.shape[0]}, index has {self.info.dimension}")
        k = min(int(k), self.ntotal)
        if k <= 0:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
        if self.info.kind == "hnsw":
            cast(faiss.IndexHNSW, faiss.downcast_index(self.index.index)).hnsw.efSearch = max(self.ef_search, k)
        sims, ids = self.index.search(self.prepare(q), k)
        found = ids[0] >= 0
        return ids[0][found].astype(np.int64), sims[0][found].astype(np.float32)

    # -- persistence -------------------------------------------------------------------------

    def save(self, index_dir: str | Path) -> Path:
        """Write `<stem>.faiss` then `<stem>.json`, each via a temp file and `os.replace` (atomic per file).

        The sidecar carries the index bytes' sha256, so a crash between the two replaces is detected.
        """
        index_dir = Path(index_dir)
        index_dir.mkdir(parents=True, exist_ok=True)
        stem = index_filename(self.info.model_name, self.info.method, self.info.component)
        data = faiss.serialize_index(self.index).tobytes()
        sidecar = self.info.to_json(hashlib.sha256(data).hexdigest(), self.ntotal)
        path = index_dir / f"{stem}.faiss"
        _atomic_write(path, data)
        _atomic_write(index_dir / f"{stem}.json", json.dumps(sidecar, indent=1).encode())
        return path

    @classmethod
    def load(cls, path: str | Path, **kwargs: Any) -> VectorIndex:
        """Load `<stem>.faiss` with its sidecar; LibraryError if either is missing or they disagree."""
        path = Path(path)
        sidecar_path = path.with_suffix(".json")
        try:
            sidecar = json.loads(sidecar_path.read_text())
            data = path.read_bytes()
            info = IndexInfo.from_json(sidecar)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise LibraryError(f"cannot read index {path}: {exc}") from exc
        if hashlib.sha256(data).hexdigest() != sidecar.get("faiss_sha256"):
            raise LibraryError(f"index {path} does not match its sidecar (checksum differs)")
        index = cls(info, **kwargs)
        loaded = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
        if not isinstance(loaded, faiss.IndexIDMap2) or loaded.d != info.dimension:
            raise LibraryError(f"index {path} is not an IndexIDMap2 of dimension {info.dimension}")
        index.index = loaded
        if set(index.ids().tolist()) != set(info.names) or index.ntotal != len(info.names):
            raise LibraryError(f"index {path}: stored ids differ from its sidecar")
        return index


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class LibraryIndexes:
    """Loads, checks and (re)builds the per-key indexes of a store, caching them in memory.

    `get()` is cheap when nothing changed (one version query). When the store's version moved on,
    the index is reloaded from disk; if the files are missing, corrupt, or their task ids / embedding
    rows differ from the database's, the index is rebuilt from the database and saved.
    """

    def __init__(
        self,
        store: LibraryStore,
        index_dir: str | Path,
        kind: IndexKind = "flat",
        similarity: Similarity = DEFAULT_SIMILARITY,
        **index_kwargs: Any,
    ):
        self.store = store
        self.index_dir = Path(index_dir)
        self.kind: IndexKind = kind
        self.similarity: Similarity = similarity
        self.index_kwargs = index_kwargs
        self._cache: dict[tuple[str, str, str], VectorIndex] = {}
        self._lock = threading.Lock()
        self.rebuilds = 0  # how many times an index was rebuilt from the database (for tests and logs)

    def path(self, model_name: str, method: str, component: str) -> Path:
        return self.index_dir / f"{index_filename(model_name, method, component)}.faiss"

    def get(self, model_name: str, method: str, component: str) -> VectorIndex:
        key = (model_name, method, component)
        with self._lock:
            version = self.store.version()
            cached = self._cache.get(key)
            if cached is not None and cached.info.library_version == version:
                return cached
            index = self._load_checked(key, version)
            if index is None:
                index = VectorIndex.from_embedding_set(
                    self.store.embedding_set(*key), self.kind, self.similarity, **self.index_kwargs
                )
                index.save(self.index_dir)
                self.rebuilds += 1
            self._cache[key] = index
            return index

    def _load_checked(self, key: tuple[str, str, str], version: str) -> VectorIndex | None:
        """The on-disk index if it agrees with the database, else None (caller rebuilds)."""
        try:
            index = VectorIndex.load(self.path(*key), **self.index_kwargs)
        except LibraryError:
            return None
        if index.info.kind != self.kind or index.info.similarity != self.similarity:
            return None
        if index.info.library_version != version:
            if index.info.embedding_ids != self.store.embedding_ids(*key):
                return None  # rows added, removed or replaced since the file was written
            index.info.library_version = version
            index.save(self.index_dir)  # content is current: just re-stamp the sidecar
        return index

    def for_target(
        self, model_name: str, model_hash: str, method: str, component: str, dimension: int
    ) -> VectorIndex:
        """The index a target embedding is searched in, with a clear error when models differ."""
        keys = [k for k in self.store.keys() if k.method == method and k.component == component]
        if not keys:
            raise LibraryError(f"the library has no {method} embeddings for component {component!r}")
        if not any(k.model_name == model_name for k in keys):
            lib = keys[0]
            raise LibraryError(
                f"library built with model {lib.model_name} (hash {lib.model_hash}), target embedded with "
                f"{model_name} (hash {model_hash}): re-embed the target with {lib.model_name}"
            )
        index = self.get(model_name, method, component)
        index.check_compatible(model_name, model_hash, dimension)
        return index

    def sync(self) -> int:
        """Bring every index up to date and delete files of keys no longer in the library; returns #indexes."""
        keys = {(k.model_name, k.method, k.component) for k in self.store.keys()}
        for key in sorted(keys):
            self.get(*key)
        wanted = {index_filename(*key) for key in keys}
        if self.index_dir.exists():
            for path in self.index_dir.glob("*.faiss"):
                if path.stem not in wanted:
                    path.unlink(missing_ok=True)
                    path.with_suffix(".json").unlink(missing_ok=True)
        with self._lock:
            for key in list(self._cache):
                if key not in keys:
                    del self._cache[key]
        return len(keys)
