"""What every embedding method returns, and how it is saved beside its metadata."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from embeddings import __version__

FORMAT_VERSION = 1


@dataclass
class EmbeddingResult:
    """Named float32 vectors of one dataset under one method, with the provenance to reproduce them.

    `vectors` maps a component name to a 1-D vector: TextEmb and SEmb have one component
    ("text" / "sentence"); TaskEmb has one per Fisher component ("cls_output",
    "layer_3.attention_output", "layer_3.output", ...).
    """

    method: str
    vectors: dict[str, np.ndarray]
    model_name: str
    model_hash: str
    dataset_name: str
    dataset_hash: str
    task_type: str
    num_examples: int
    num_features: int
    num_tokens: int
    options: dict[str, Any] = field(default_factory=dict)
    package_version: str = __version__
    versions: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def components(self) -> list[str]:
        return list(self.vectors)

    def metadata(self) -> dict[str, Any]:
        meta = asdict(self)
        meta.pop("vectors")
        meta["format_version"] = FORMAT_VERSION
        meta["dimensions"] = {name: int(v.shape[0]) for name, v in self.vectors.items()}
        return meta

    def save(self, path: str | Path) -> Path:
        """Write `<path>` (.npz, one array per component) and `<path>.json` (metadata), atomically."""
        path = Path(path)
        if path.suffix != ".npz":
            path = path.with_suffix(".npz")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as fh:
            arrays: dict[str, Any] = {_key(name): vec.astype(np.float32) for name, vec in self.vectors.items()}
            np.savez(fh, **arrays)
        meta_path = path.with_suffix(".json")
        meta_tmp = meta_path.with_name(meta_path.name + ".tmp")
        meta_tmp.write_text(json.dumps(self.metadata(), indent=2, sort_keys=True))
        tmp.replace(path)
        meta_tmp.replace(meta_path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> EmbeddingResult:
        path = Path(path)
        if path.suffix != ".npz":
            path = path.with_suffix(".npz")
        meta = json.loads(path.with_suffix(".json").read_text())
        with np.load(path) as arrays:
            vectors = {name: arrays[_key(name)].astype(np.float32) for name in meta["dimensions"]}
        meta = {k: v for k, v in meta.items() if k not in ("format_version", "dimensions")}
        return cls(vectors=vectors, **meta)


def _key(component: str) -> str:
    return component.replace(".", "__")
