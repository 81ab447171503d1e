"""The data directory's layout, in one place (`Settings.paths` gives it for the configured directory)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class DataPaths:
    """Where everything under the data directory lives: the one place that spells out its layout."""

    root: Path

    @property
    def datasets(self) -> Path:
        """Uploaded files, content-addressed by their sha256."""
        return self.root / "datasets"

    @property
    def embeddings(self) -> Path:
        """Cached target embeddings (see `library.target_cache`)."""
        return self.root / "embeddings"

    @property
    def checkpoints(self) -> Path:
        """Fine-tuned source encoders, keyed by data, model and regime (`embeddings.transfer`)."""
        return self.root / "checkpoints"

    @property
    def indexes(self) -> Path:
        """FAISS indexes over the library's vectors."""
        return self.root / "indexes"

    @property
    def transfer_runs(self) -> Path:
        """Resumable checkpoints of running transfer jobs."""
        return self.root / "transfer_runs"

    @property
    def sources(self) -> Path:
        """An operator's task folders for library sources (the service's source training data)."""
        return self.root / "sources"

    @property
    def database(self) -> Path:
        return self.root / "taskrank.db"

    @property
    def broker(self) -> Path:
        return self.root / "broker.sqlite"

    def source_data_root(self, fallback: Path | None = None) -> Path | None:
        """`sources/` when it exists, else `fallback` (the checkout's `../shared/data`) when it does."""
        for root in (self.sources, fallback):
            if root is not None and root.is_dir():
                return root.resolve()
        return None
