"""The transfer results page, `/transfers/{id}/view`: every job's progress while the batch runs, then a
table and an SVG bar chart of each source's gain over the no-transfer baseline, with error bars (the
source's std over the seeds), a band for the baseline's std, and each source's recommendation rank."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse

from app.deps import JobsDep, Reader, SettingsDep
from app.rendering import fmt_signed, nice_ticks, not_found, render, text_width, tick_label
from app.routes.transfers import transfer_public, visible_batch
from embeddings.registry import TRANSFER_METHODS

router = APIRouter(tags=["pages"])

GAIN_COLOUR, LOSS_COLOUR = "#1f9d6b", "#c8372d"
METHOD_LABELS = TRANSFER_METHODS


def source_label(source: dict[str, Any]) -> str:
    return f"#{source['rank']} {source['name']}" if source.get("rank") is not None else source["name"]


def _value(source: dict[str, Any]) -> str:
    if source.get("gain") is None:
        return str(source["state"])
    return f"{fmt_signed(source['gain'])} ± {float(source.get('std') or 0.0):.2f}"


def seed_noise(sources: list[dict[str, Any]], baseline: dict[str, Any]) -> dict[str, float] | None:
    """When the spread over seeds is at least the difference between the best and the worst source, the
    batch cannot tell its sources apart: the page says so. None when it can (or cannot judge: under two
    finished sources, or a single seed, which measures no spread)."""
    done = [s for s in sources if s.get("mean") is not None and len(s.get("scores") or []) > 1]
    if len(done) < 2:
        return None
    spread = max(s["mean"] for s in done) - min(s["mean"] for s in done)
    noise = max([float(s.get("std") or 0.0) for s in done] + [float(baseline.get("std") or 0.0)])
    if noise <= 0 or noise < spread:
        return None
    return {"spread": spread, "noise": noise}


def gain_chart(sources: list[dict[str, Any]], baseline_std: float | None,
               metric: str | None) -> dict[str, Any] | None:
    """Horizontal bars of gain = source mean - baseline mean, each with a ±std whisker; geometry in
    viewBox units. None until some source has a result; the others get a row with their state."""
    if not any(s.get("gain") is not None for s in sources):
        return None
    font, row, top, bottom = 13, 30.0, 10.0, 36.0
    label_w = min(220.0, max(text_width(source_label(s), font) for s in sources) + 10)
    value_w = max(text_width(_value(s), 12) for s in sources) + 10
    plot_x0 = label_w
    plot_x1 = plot_x0 + 320.0
    width = plot_x1 + value_w
    band = float(baseline_std or 0.0)
    values = [0.0, -band, band]
    for s in sources:
        if s.get("gain") is not None:
            values += [s["gain"] - (s.get("std") or 0.0), s["gain"] + (s.get("std") or 0.0)]
    low, high = min(values), max(values)
    span = high - low or 1.0
    low, high = low - 0.06 * span, high + 0.06 * span
    ticks = nice_ticks(low, high)
    step = ticks[1] - ticks[0] if len(ticks) > 1 else span

    def sx(v: float) -> float:
        return plot_x0 + (v - low) / (high - low) * (plot_x1 - plot_x0)

    zero = sx(0.0)
    bars = []
    for i, s in enumerate(sources):
        y = top + i * row
        bar: dict[str, Any] = {"label": source_label(s), "name": s["name"], "rank": s.get("rank"), "y": y,
                               "h": row - 10, "mid": y + (row - 10) / 2, "state": s["state"]}
        if s.get("gain") is not None:
            gain, std = float(s["gain"]), float(s.get("std") or 0.0)
            x_a, x_b = sorted((zero, sx(gain)))
            whisker_lo, whisker_hi = sx(gain - std), sx(gain + std)
            bar.update(x=round(x_a, 2), w=round(max(x_b - x_a, 1.0), 2), gain=gain, std=std,
                       colour=GAIN_COLOUR if round(gain, 2) >= 0 else LOSS_COLOUR, e1=round(whisker_lo, 2),
                       e2=round(whisker_hi, 2), value=_value(s),
                       value_x=round(max(whisker_hi, zero) + 5, 2))
        else:
            bar.update(x=None, value=_value(s), value_x=round(zero + 5, 2))
        bars.append(bar)
    plot_bottom = top + len(sources) * row
    return {"width": width, "height": plot_bottom + bottom, "bars": bars, "label_x": plot_x0 - 8,
            "zero": round(zero, 2), "plot_top": top - 4, "plot_bottom": plot_bottom, "plot_x0": plot_x0,
            "plot_x1": plot_x1, "band_x": round(sx(-band), 2), "band_w": round(sx(band) - sx(-band), 2),
            "ticks": [{"x": round(sx(t), 2), "label": tick_label(t, step)} for t in ticks],
            "axis_label": f"gain over the baseline ({metric or 'score'} points)", "font": font}


@router.get("/transfers/{transfer_id}/view", response_class=HTMLResponse, include_in_schema=False)
def transfer_page(transfer_id: str, request: Request, jobs: JobsDep, settings: SettingsDep,
                  owner: Reader) -> HTMLResponse:
    try:
        batch = visible_batch(jobs, settings, owner, transfer_id)
    except HTTPException:
        return not_found(request, f"transfer {transfer_id}")
    public = transfer_public(batch, jobs)
    target = jobs.get_dataset(batch.target_dataset_id)
    sources = [s.model_dump() for s in public.sources]
    combined = public.combined.model_dump() if public.combined is not None else None
    # a multi-source method has one result for all its sources: the chart shows that one bar
    chart_rows = sources if combined is None else [{**combined, "name": METHOD_LABELS.get(public.method, public.method),
                                                    "rank": None}]
    return render(request, "transfer.html", {
        "title": f"Transfer · {target.name if target else batch.target_dataset_id}", "transfer": public,
        "target": target, "sources": sources, "baseline": public.baseline.model_dump(),
        "combined": combined, "method_label": METHOD_LABELS.get(public.method, public.method),
        "chart": gain_chart(chart_rows, public.baseline.std, public.main_metric),
        "from_ranking": any(s.get("rank") is not None for s in sources),
        "noise": seed_noise(sources, public.baseline.model_dump()) if combined is None else None,
        "signature": "|".join(f"{j}" for j in [public.baseline.state] + [s["state"] for s in sources])})
