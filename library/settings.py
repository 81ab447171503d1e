"""The one settings object: every knob of taskrank, read from `TASKRANK_*` environment variables.

It lives at the bottom of the flow (in `library/`, which `worker/` and `app/` import downward) so that
nothing below `app/` ever imports `app`. `DataPaths` owns the data directory's layout.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from library.index import DEFAULT_SIMILARITY, Similarity
from library.paths import DataPaths


class Settings(BaseSettings):
    """Every knob in one place; `get_settings()` is the only reader of the environment."""

    model_config = SettingsConfigDict(env_prefix="TASKRANK_", env_file=None, extra="ignore")

    # Model and compute
    model: str = Field("default", description="Encoder: 'default' (bundled all-MiniLM-L6-v2), a HF name or a local path.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto = CUDA with bf16 autocast when present.")
    torch_threads: int = Field(0, ge=0, description="torch intra-op threads; 0 = one per core.")
    max_tokens_per_batch: int = Field(0, ge=0, description="Padded tokens per encoder batch; 0 = auto (4096 on CPU, 32768 on CUDA).")
    seed: int = Field(13, description="Seed for sampling, head training and label sampling.")

    # Data and limits
    data_dir: Path = Field(Path("var"), description="Where datasets, embeddings, the database and indexes live.")
    max_rows: int = Field(200_000, ge=1, description="Rows over this are rejected.")
    max_text_chars: int = Field(20_000, ge=1, description="A single text (or context) over this is rejected.")
    max_upload_bytes: int = Field(100 * 1024 * 1024, ge=1, description="Upload size cap, enforced while streaming.")

    # Index
    index_kind: Literal["flat", "hnsw"] = Field(
        "flat", description="FAISS index over the library: exact (flat) or approximate (hnsw) for 100k+ sources.")
    hnsw_ef_search: int = Field(
        512, ge=1, description="HNSW search depth; 512 gave recall@10 >= 0.99 at 100k x 768 in bench/rank.py.")
    similarity: Similarity = Field(
        DEFAULT_SIMILARITY, description="Ranking similarity: cosine after subtracting the library's mean vector (fewer "
                               "hub sources; README, Selection quality), or plain cosine (Vu et al. 2020).")

    # Service
    database_url: str | None = Field(None, description="SQLAlchemy URL; default SQLite in data_dir.")
    broker_url: str | None = Field(None, description="Celery broker; default an embedded SQLite broker in data_dir.")
    api_keys: str | None = Field(None, description="Comma-separated API keys; when set, writes need a Bearer key.")
    admin_keys: str | None = Field(
        None, description="Comma-separated admin keys. With keys configured, the shared library's writes (add, "
                          "delete, restore the shipped sources) need one of these (403 for any other key); an "
                          "admin key is also a valid API key.")
    auth_reads: bool = Field(False, description="With API keys: reads need a key too.")
    per_key_ownership: bool = Field(False, description="With API keys: a key sees only its own datasets and jobs.")
    host: str = Field("127.0.0.1", description="Address `taskrank serve` binds.")
    port: int = Field(8000, description="Port `taskrank serve` binds.")
    api_workers: int = Field(1, ge=1, description="API processes of `taskrank serve` (uvicorn workers; >1 for load).")
    access_log: bool = Field(True, description="uvicorn's per-request access log.")
    job_soft_time_limit: int = Field(3600, ge=1, description="Seconds before a job is asked to stop.")
    job_time_limit: int = Field(3900, ge=1, description="Seconds before a job's process is killed.")
    broker_visibility_timeout: int = Field(
        7200, ge=1, description="Seconds before an unacknowledged message is redelivered (Redis).")
    worker_concurrency: int = Field(1, ge=1, description="Worker processes per `taskrank worker`.")
    job_stale_after: float = Field(
        90.0, gt=0, description="A running job silent this long lost its worker: it may be taken over.")
    job_requeue_after: float = Field(
        300.0, gt=0, description="A queued job unstarted this long is dispatched again (a broker lost it).")
    sweep_interval: float = Field(15.0, gt=0, description="Seconds between a worker's sweeps for lost jobs.")

    ranker_refit_after: int = Field(
        20, ge=1, description="The learned ranker refits (a job on the train queue) after this many new transfer "
                              "results in its regime.")
    transfer_matrix: Path | None = Field(
        None, description="The transfer matrix the learned ranker trains on (default: the shipped "
                          "library/default/transfer_matrix.csv).")
    ranker_esm_features: bool = Field(
        True, description="Fit the learned ranker with ESM-LogME features (embeds each matrix target's rows once).")

    shared_data_dir: Path = Field(Path("..") / "shared" / "data",
                                  description="Task folders used as library sources' training data when "
                                              "data_dir/sources does not exist (relative to the working directory).")

    @property
    def paths(self) -> DataPaths:
        return DataPaths(self.data_dir)

    @property
    def resolved_transfer_matrix(self) -> Path:
        from library.transfers import DEFAULT_MATRIX

        return self.transfer_matrix or DEFAULT_MATRIX

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.paths.database.resolve()}"

    @property
    def resolved_broker_url(self) -> str:
        """The embedded default needs no server: kombu's SQLAlchemy transport on a SQLite file."""
        return self.broker_url or f"sqla+sqlite:///{self.paths.broker.resolve()}"

    @property
    def embedded_broker(self) -> bool:
        return self.resolved_broker_url.startswith("sqla+")

    @property
    def api_key_set(self) -> frozenset[str]:
        """Every key that may call the API: the API keys and the admin keys."""
        return frozenset(k.strip() for k in f"{self.api_keys or ''},{self.admin_keys or ''}".split(",") if k.strip())

    @property
    def admin_key_set(self) -> frozenset[str]:
        return frozenset(k.strip() for k in (self.admin_keys or "").split(",") if k.strip())


@lru_cache
def get_settings() -> Settings:
    return Settings()
