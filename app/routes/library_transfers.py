"""`GET /library/transfers`: the shipped transfer matrix with the caller's own transfers, as JSON or a page.

One path, two faces: JSON by default (`curl`, clients), the heatmap page when the request prefers
HTML (a browser's `Accept: text/html`) or asks with `?format=html`. The view model is
`library.transfers.build_view`; this module gathers the caller's finished transfer batches from the
job store and draws the page (a table heatmap, colours computed here, no scripts).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field

from app.deps import JobsDep, Reader, SettingsDep
from library.transfers import (
    DEFAULT_MATRIX,
    describe_cost,
    gather_user_batches,
    load_view,
    select_cells,
    user_runs,
)

router = APIRouter(tags=["library"])

Origin = Literal["matrix", "user"]


# -- schemas ----------------------------------------------------------------------------------------

class MatrixRunPublic(BaseModel):
    source: str
    target: str
    seed: int | None
    score: float
    baseline_score: float = Field(description="the no-transfer baseline's score on the same seed and rows")
    gain_points: float = Field(description="score - baseline_score")
    relative_gain: float | None = Field(description="gain in % of the baseline (None if the baseline is <= 0)")
    metric: str | None
    origin: Origin = Field(description="matrix: the shipped matrix; user: one of your transfer jobs")
    job_id: str | None = None
    batch_id: str | None = None
    source_rows: float | None = None
    target_rows: float | None = None
    dev_rows: float | None = None
    steps: float | None = None
    best_step: float | None = None
    seconds: float | None = None
    created_at: str | None = None


class MatrixCellPublic(BaseModel):
    source: str
    target: str
    mean_gain: float | None = Field(description="relative gain in %: (mean score - mean baseline) / mean baseline")
    seed_sd: float | None = Field(description="sample sd of the runs' relative gains (None with one run)")
    n_runs: int
    mean_score: float
    mean_baseline: float
    origins: list[Origin]
    runs: list[MatrixRunPublic]


class MatrixTargetPublic(BaseModel):
    name: str = Field(description="column key (a user's target that shares a shipped name gets ' (yours)')")
    label: str
    origin: Origin
    metric: str | None
    seeds: int
    sources: int
    runs: int
    baseline_mean: float
    baseline_sd: float | None
    majority_score: float | None
    transfer_sd_mean: float | None
    seed_sd: float | None = Field(description="pooled per-seed sd (see `rule`)")
    threshold_points: float | None = Field(description="2 x seed_sd")
    best_source: str
    best_gain_points: float
    best_gain_ci95: list[float] | None = Field(description="t-interval over the paired per-seed differences")
    best_relative_gain: float | None
    best_runs: int
    informative: bool | None = Field(description="best_gain_points > threshold_points; null if undetermined")


class MatrixSourcePublic(BaseModel):
    name: str
    origins: list[Origin]
    mean_gain: float | None = Field(description="mean of the source's cell gains over the targets shown")
    targets: int


class MatrixInfoPublic(BaseModel):
    path: str | None
    present: bool = Field(description="false until the shipped matrix file has rows")
    runs: int
    model: dict[str, Any] | None
    target_regime: dict[str, Any] | None
    source_regime: dict[str, Any] | None
    problems: list[str] = Field(description="rows of the file left out (e.g. a half-written last line)")
    cost: dict[str, Any] | None = Field(None, description="what measuring it cost: seconds per target run, each "
                                        "source's training, the runner's sessions (library.transfers.matrix_cost)")


class LibraryTransfersPublic(BaseModel):
    matrix: MatrixInfoPublic
    rule: str
    gain: str
    sources: list[MatrixSourcePublic] = Field(description="rows, in clustered order")
    targets: list[MatrixTargetPublic] = Field(description="columns, in clustered order (yours last)")
    cells: list[MatrixCellPublic] = Field(description="row-major; only the asked source/target when given")
    skipped_targets: dict[str, str] = Field(description="targets left out (baseline <= 0) and why")
    user_runs: int


# -- dependencies -----------------------------------------------------------------------------------

def matrix_path() -> Path:
    """Where the matrix is read from: the shipped file. Tests point it elsewhere (dependency_overrides)."""
    return DEFAULT_MATRIX


MatrixPath = Annotated[Path, Depends(matrix_path)]


def _view(jobs: Any, settings: Any, owner: str | None, path: Path) -> dict[str, Any]:
    batches = gather_user_batches(jobs, owner if settings.per_key_ownership else None)
    return load_view(path, user_runs(batches))


def _wants_html(request: Request, format: str | None) -> bool:
    if format is not None:
        return format == "html"
    accept = request.headers.get("accept", "").lower()
    html, js = accept.find("text/html"), accept.find("application/json")
    return html >= 0 and (js < 0 or html < js)  # a browser's Accept; curl's */* and clients get JSON


# -- the page's colours ------------------------------------------------------------------------------

GAIN_RGB, LOSS_RGB = (31, 157, 107), (200, 55, 45)


def colour_scale(cells: list[dict[str, Any]]) -> float:
    """The |gain| (in %) that gets the full colour: the 95th percentile of the cells' |gain|, at least 1."""
    values = sorted(abs(c["mean_gain"]) for c in cells if c.get("mean_gain") is not None)
    if not values:
        return 1.0
    return max(1.0, values[min(len(values) - 1, math.ceil(0.95 * len(values)) - 1)])


def heat(gain: float | None, scale: float) -> dict[str, str]:
    """Background and text colour of a cell: white at 0, green for gains, red for losses."""
    if gain is None:
        return {"bg": "#f4f6fa", "fg": "#5d6779"}
    t = min(1.0, abs(gain) / scale)
    rgb = GAIN_RGB if gain >= 0 else LOSS_RGB
    mixed = tuple(round(255 + (c - 255) * t) for c in rgb)
    return {"bg": "#" + "".join(f"{c:02x}" for c in mixed), "fg": "#ffffff" if t > 0.6 else "#1b2333"}


def _page(request: Request, view: dict[str, Any], source: str | None, target: str | None) -> Any:
    from app.rendering import render

    scale = colour_scale(view["cells"])
    by_key = {(c["source"], c["target"]): c for c in view["cells"]}
    rows = []
    for s in view["sources"]:
        cells = []
        for t in view["targets"]:
            cell = by_key.get((s["name"], t["name"]))
            gain = cell["mean_gain"] if cell else None
            chosen = bool(source or target) and source in (None, s["name"]) and target in (None, t["name"])
            cells.append({"target": t["name"], "cell": cell, "colour": heat(gain, scale),
                          "selected": cell is not None and chosen})
        rows.append({"source": s, "cells": cells})
    selected = select_cells(view, source, target) if (source or target) else []
    regime = (view["matrix"].get("target_regime") or {})
    model = (view["matrix"].get("model") or {})
    return render(request, "library_transfers.html", {
        "title": "Transfer matrix", "view": view, "rows": rows, "scale": scale, "source": source,
        "target": target, "selected": selected, "regime": regime, "model": model,
        "legend": [{"value": v, **heat(v, scale)} for v in (-scale, -scale / 2, 0.0, scale / 2, scale)],
        "informative": sum(1 for t in view["targets"] if t["informative"]),
        "cost": describe_cost(view["matrix"]["cost"]),
        "user_targets": sum(1 for t in view["targets"] if t["origin"] == "user")})


# -- the route -----------------------------------------------------------------------------------------

@router.get("/library/transfers", response_model=LibraryTransfersPublic,
            responses={200: {"content": {"text/html": {}},
                             "description": "JSON, or the heatmap page for `Accept: text/html` or format=html"}})
def library_transfers(request: Request, jobs: JobsDep, settings: SettingsDep, owner: Reader, path: MatrixPath,
                      source: Annotated[str | None, Query(max_length=200)] = None,
                      target: Annotated[str | None, Query(max_length=200)] = None,
                      format: Literal["json", "html"] | None = None) -> Any:
    """The shipped transfer matrix (`library/default/transfer_matrix.csv`) and your own finished
    intermediate-transfer jobs, as sources x targets in clustered order: per cell the mean relative gain,
    its seed sd, the number of runs and the runs; per target the informativeness report (baseline,
    majority class, seed sd, best source and its gain with a 95% interval, and the fixed `rule`).
    `source` and/or `target` keep only those cells (the page shows their runs)."""
    view = _view(jobs, settings, owner, path)
    if _wants_html(request, format):
        return _page(request, view, source, target)
    if source or target:
        view = {**view, "cells": select_cells(view, source, target)}
    return LibraryTransfersPublic(**view)
