"""The target-embedding cache: a target's embedding under the library's options, computed once.

Keyed by (dataset content hash, model weights hash, embedding method, library options hash), so the
CLI, the worker and the task map all find the same file; a ranking by another method that needs an
embedding already computed (TextEmb then SEmb, or either after the ensemble) reads it from here.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embeddings.result import EmbeddingResult


def cache_key(dataset_hash: str, model_hash: str, method: str, options_hash: str) -> str:
    return hashlib.sha256(json.dumps([dataset_hash, model_hash, method, options_hash]).encode()).hexdigest()[:32]


@dataclass
class TargetEmbeddingCache:
    """Files `<key>.npz` + `<key>.json` under `directory` (DataPaths.embeddings); counts hits and misses."""

    directory: Path
    hits: int = 0
    misses: int = 0

    def path(self, dataset_hash: str, model_hash: str, method: str, options_hash: str) -> Path:
        return Path(self.directory) / f"{cache_key(dataset_hash, model_hash, method, options_hash)}.npz"

    def get(self, dataset_hash: str, model_hash: str, method: str, options_hash: str) -> EmbeddingResult | None:
        path = self.path(dataset_hash, model_hash, method, options_hash)
        if path.is_file() and path.with_suffix(".json").is_file():
            try:
                found = EmbeddingResult.load(path)
            except (OSError, ValueError, KeyError, TypeError):
                found = None  # a damaged file is recomputed and overwritten
            if found is not None and found.method == method:
                self.hits += 1
                return found
        self.misses += 1
        return None

    def put(self, result: EmbeddingResult, options_hash: str, dataset_hash: str | None = None) -> Path:
        """Cache `result` under `dataset_hash`: the hash of the dataset as the caller has it (the result's
        own `dataset_hash` is that of the library-sized sample it was computed on)."""
        path = self.path(dataset_hash or result.dataset_hash, result.model_hash, result.method, options_hash)
        result.save(path)
        return path

    def get_rows(self, dataset_hash: str, model_hash: str, options_hash: str) -> np.ndarray | None:
        """The target's per-row pooled embeddings (what LogME-based methods score), when cached."""
        path = self.path(dataset_hash, model_hash, "rows", options_hash).with_suffix(".rows.npy")
        if path.is_file():
            try:
                rows = np.load(path, allow_pickle=False)
                self.hits += 1
                return rows
            except (OSError, ValueError):
                pass
        self.misses += 1
        return None

    def put_rows(self, dataset_hash: str, model_hash: str, options_hash: str, rows: np.ndarray) -> Path:
        path = self.path(dataset_hash, model_hash, "rows", options_hash).with_suffix(".rows.npy")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npy")
        np.save(tmp, np.asarray(rows, dtype=np.float32), allow_pickle=False)
        tmp.replace(path)
        return path

    def find(self, dataset_hash: str, method: str, model_hash: str | None = None,
             options_hash: str | None = None) -> EmbeddingResult | None:
        """A cached embedding of a target by its dataset hash; None when absent.

        With the model and options hashes the file is read directly. Otherwise (or when it is not
        there) the JSON sidecars, which carry the dataset hash, method and model, are searched,
        newest first.
        """
        folder = Path(self.directory)
        if not folder.is_dir() or not dataset_hash:
            return None
        if model_hash and options_hash:
            exact = self.path(dataset_hash, model_hash, method, options_hash)
            if exact.is_file() and exact.with_suffix(".json").is_file():
                try:
                    found = EmbeddingResult.load(exact)
                    if found.method == method and found.dataset_hash == dataset_hash:
                        return found
                except (OSError, ValueError, KeyError, TypeError):
                    pass
        candidates = []
        for meta_path in folder.glob("*.json"):
            try:
                meta = json.loads(meta_path.read_text())
            except (OSError, ValueError):
                continue
            if not isinstance(meta, dict) or meta.get("method") != method:
                continue
            if str(meta.get("dataset_hash", "")).lower() != dataset_hash.lower():
                continue
            if model_hash and meta.get("model_hash") != model_hash:
                continue
            if meta_path.with_suffix(".npz").is_file():
                candidates.append((meta_path.stat().st_mtime, meta_path))
        for _, meta_path in sorted(candidates, reverse=True):
            try:
                return EmbeddingResult.load(meta_path.with_suffix(".npz"))
            except (OSError, ValueError, KeyError, TypeError):
                continue
        return None


def target_cache_path(data_dir: str | Path, dataset_hash: str, model_hash: str, method: str,
                      options_hash: str) -> Path:
    """Where a target's embedding is cached under the data directory `data_dir`."""
    from library.paths import DataPaths

    return TargetEmbeddingCache(DataPaths(Path(data_dir)).embeddings).path(dataset_hash, model_hash, method,
                                                                           options_hash)


def find_target_embedding(data_dir: str | Path, dataset_hash: str, method: str,
                          model_hash: str | None = None, options_hash: str | None = None) -> EmbeddingResult | None:
    """`TargetEmbeddingCache.find` under the data directory `data_dir`."""
    from library.paths import DataPaths

    return TargetEmbeddingCache(DataPaths(Path(data_dir)).embeddings).find(dataset_hash, method, model_hash,
                                                                           options_hash)
