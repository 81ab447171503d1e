"""What a transfer from each ranked source would cost here, in minutes: cost-aware advice for rankings.

A transfer (`worker.runner.run_transfer`) fine-tunes the source in the default source regime, unless its
checkpoint is already cached, then the target once per seed. Its time is estimated as rows processed
(steps x batch size) times this machine's measured seconds per training row: the median over the
target fine-tunings the service has run (the transfer-results table records their seconds and steps),
or, before any, over the shipped matrix's source fine-tunings (its sidecar; another machine, and said so).
A source's checkpoint counts as cached when the file the matrix's sidecar (or an earlier job) names for
it is in the data directory's checkpoint cache. Source time is an upper bound: early stopping may end
the source's training sooner.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import median
from typing import Any

SOURCE_BATCH = 32  # embeddings.transfer.SOURCE_REGIME
DEFAULT_SEEDS, DEFAULT_EPOCHS, DEFAULT_BATCH, DEFAULT_TARGET_ROWS = 2, 1.0, 16, 1000  # POST /transfers defaults


@dataclass(frozen=True)
class RowRate:
    """Seconds per training row processed, and where the figure comes from."""

    seconds_per_row: float
    basis: str


def row_rate(results: Sequence[Any], sidecar: Mapping[str, Any]) -> RowRate | None:
    """This machine's rate from recorded transfer results (their target runs), else the matrix sidecar's."""
    here = []
    for r in results:
        info = r.info or {}
        batch = int(info.get("batch_size") or DEFAULT_BATCH)
        for seconds, steps in zip(info.get("seconds") or [], info.get("steps") or [], strict=False):
            if seconds and steps:
                here.append(float(seconds) / (float(steps) * batch))
    if here:
        return RowRate(median(here), f"measured here over {len(here)} target fine-tuning(s)")
    there = []
    for entry in (sidecar.get("sources") or {}).values():
        if isinstance(entry, Mapping) and entry.get("seconds") and entry.get("steps"):
            there.append(float(entry["seconds"]) / (float(entry["steps"]) * SOURCE_BATCH))
    if there:
        return RowRate(median(there), "the shipped matrix's machine (no transfer has run here yet)")
    return None


def cached_checkpoints(checkpoint_dir: Path, sidecar: Mapping[str, Any], results: Sequence[Any]) -> dict[str, bool]:
    """Source name -> whether its fine-tuned checkpoint (as named by the sidecar or a recorded job) is cached."""
    names: dict[str, set[str]] = {}
    for source, entry in (sidecar.get("sources") or {}).items():
        if isinstance(entry, Mapping) and entry.get("checkpoint"):
            names.setdefault(source, set()).add(str(entry["checkpoint"]))
    for r in results:
        checkpoint = (r.info or {}).get("source_checkpoint")
        if checkpoint:
            names.setdefault(r.source, set()).add(str(checkpoint))
    return {source: any((checkpoint_dir / n).is_file() for n in files) for source, files in names.items()}


def estimate_minutes(source_rows: int, cached: bool, target_rows: int, rate: RowRate, *,
                     source_max_rows: int = 10_000, source_epochs: float = 2.0, seeds: int = DEFAULT_SEEDS,
                     epochs: float = DEFAULT_EPOCHS, batch: int = DEFAULT_BATCH,
                     target_max_rows: int = DEFAULT_TARGET_ROWS) -> float:
    """Minutes for one source's transfer: its fine-tuning (none when cached), then the target per seed (80% of
    its rows train: the rest is the held-out dev split)."""
    source_steps = 0 if cached else math.ceil(min(source_rows, source_max_rows) / SOURCE_BATCH) * source_epochs
    train = min(max(1, round(0.8 * target_rows)), target_max_rows)
    target_steps = math.ceil(train / batch) * epochs * seeds
    return rate.seconds_per_row * (source_steps * SOURCE_BATCH + target_steps * batch) / 60.0


def estimates(sources: Sequence[Mapping[str, Any]], target_rows: int | None, rate: RowRate | None,
              cached: Mapping[str, bool]) -> dict[str, dict[str, Any]]:
    """Per ranked source (`name`, `num_train`, `score`: the expected gain): minutes, cached, gain per minute."""
    if rate is None or not target_rows:
        return {}
    out = {}
    for s in sources:
        minutes = estimate_minutes(int(s.get("num_train") or 0), bool(cached.get(s["name"])), target_rows, rate)
        gain = float(s.get("score") or 0.0)
        out[s["name"]] = {"minutes": round(minutes, 2), "checkpoint_cached": bool(cached.get(s["name"])),
                          "gain_per_minute": round(gain / minutes, 4) if minutes > 0 else None}
    return out
