"""Exact LogME evidence of a target's rows under a fine-tuned source encoder, computed once and kept.

Exact LogME (`library.methods.logme`) costs one forward pass of the target's rows per source, and its
value depends only on those rows, the base model, the row options and the source checkpoint (whose file
name is keyed by the source's data, the model and the training regime). So each value is kept: ranking
the same target again reads it, and a source whose checkpoint is no longer cached (87 MB each; a fresh
machine has none) is still scored from the evidence computed where it was.

Append-only JSON lines. The service writes under its data directory (`DataPaths.embeddings`) and also
reads the shipped file `library/default/logme_evidence.jsonl`: the evidence of the default library's own
tasks as targets, which is what `taskrank evaluate` ranks on the shipped transfer matrix
(`bench/selection_report.py --evidence` writes it). A damaged line is skipped (recomputed if needed).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from library.bundle import default_library_path

FILE_NAME = "logme_evidence.jsonl"


def shipped_evidence_path() -> Path:
    """The evidence shipped with the default library (package data)."""
    return default_library_path() / FILE_NAME


@dataclass(frozen=True)
class EvidenceKey:
    """What one evidence value depends on."""

    rows_hash: str  # content hash of the rows scored (the library-sized sample of the target)
    model_hash: str  # the base encoder's weights hash
    rows_key: str  # the library's row options (and the token budget for a tagging target)
    checkpoint: str  # the fine-tuned source encoder's cache file name


@dataclass
class EvidenceStore:
    """Evidence by key, read from `path` and `shipped` (first found wins), new values appended to `path`."""

    path: Path | None
    shipped: Sequence[Path] = ()
    hits: int = 0
    _values: dict[EvidenceKey, float] | None = field(default=None, repr=False)

    def _load(self) -> dict[EvidenceKey, float]:
        if self._values is None:
            values: dict[EvidenceKey, float] = {}
            for path in [*self.shipped, *([self.path] if self.path is not None else [])]:
                for key, value in _read(path):
                    values[key] = value
            self._values = values
        return self._values

    def get(self, key: EvidenceKey) -> float | None:
        value = self._load().get(key)
        if value is not None:
            self.hits += 1
        return value

    def put(self, key: EvidenceKey, evidence: float, source: str) -> None:
        """Keep `evidence` (in memory always; on disk when the store has a path)."""
        self._load()[key] = float(evidence)
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        record = {**asdict(key), "source": source, "evidence": float(evidence),
                  "computed": datetime.now(UTC).isoformat(timespec="seconds")}
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, sort_keys=True) + "\n")


def _read(path: Path) -> list[tuple[EvidenceKey, float]]:
    if not path.is_file():
        return []
    found = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
            key = EvidenceKey(rows_hash=str(record["rows_hash"]), model_hash=str(record["model_hash"]),
                              rows_key=str(record["rows_key"]), checkpoint=str(record["checkpoint"]))
            value = float(record["evidence"])
        except (ValueError, KeyError, TypeError):
            continue  # a torn or damaged line: that value is computed again when needed
        if math.isfinite(value):
            found.append((key, value))
    return found
