"""Server-rendered pages (Jinja2) over the REST API, plus ranking exports and the library map as JSON.

Pages: `/` upload and start a ranking, `/jobs/{id}/view` live progress, `/rankings/{id}/view` the
result (table, bar chart, task-space map), `/library/view` the sources, `/jobs/view` recent jobs.
Charts are SVG drawn here on the server; the only scripts are the upload form and the job poller.
"""

from __future__ import annotations

import csv
import io
import json
import math
from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request, status
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from app.deps import JobsDep, LibraryDep, Reader, SettingsDep, visible
from app.rendering import (  # noqa: E402
    FIELDS_BY_TYPE,
    METHOD_LABELS,
    OTHER_COLOUR,
    TASK_TYPES,
    TYPE_COLOURS,
    TYPE_LABELS,
    detail_parts,
    nice_ticks,
    not_found,
    ranking_methods,
    render,
    text_width,
    tick_label,
)
from app.routes.jobs import job_public
from app.routes.library import task_public
from app.routes.rankings import ranking_public, with_estimates
from app.schemas import RankMethod
from embeddings.data import _TEXT_ALIASES
from library.errors import LibraryError
from library.jobs import Job, JobStore, StoredRanking
from library.methods import RANKING_METHODS
from library.projection import library_map

router = APIRouter(tags=["pages"])
MapMethod = RankMethod  # any registered ranking method: its map_basis vectors are drawn
def _visible_ranking(jobs: JobStore, settings: Any, owner: str | None, ranking_id: str) -> StoredRanking | None:
    ranking = jobs.get_ranking(ranking_id)
    if ranking is None or not visible(owner, ranking.owner, settings):
        return None
    return ranking


def _ranking_or_404(jobs: JobStore, settings: Any, owner: str | None, ranking_id: str) -> StoredRanking:
    ranking = _visible_ranking(jobs, settings, owner, ranking_id)
    if ranking is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no ranking {ranking_id}")
    return ranking


def _ranking_id_of(job: Job) -> str | None:
    result = job.result or {}
    return result.get("ranking_id") or job.params.get("ranking_id")


def bar_chart(sources: list[dict[str, Any]], method: str) -> dict[str, Any]:
    """Horizontal bars of the scores, best first; geometry in viewBox units."""
    font = 13
    label_w = min(190.0, max([text_width(f'{s["rank"]}. {s["name"]}', font) for s in sources] + [60.0]) + 10)
    width, row, top, bottom = 460.0, 28.0, 10.0, 34.0
    plot_x0, plot_x1 = label_w, width - 58
    scores = [float(s["score"]) for s in sources]
    # a learned ranking: expected gain with its interval, and whether the source is unlikely to help
    learned = [(s.get("details") or {}).get("learned") or {} for s in sources]
    intervals = [(float(d["low"]), float(d["high"])) if "low" in d else None for d in learned]
    ends = [v for pair in intervals if pair for v in pair]
    low = min(0.0, min(scores + ends, default=0.0))
    high = max(scores + ends, default=1.0)
    if high <= low:
        high = low + 1.0
    ticks = nice_ticks(low, high)
    high = max(high, ticks[-1])
    step = ticks[1] - ticks[0] if len(ticks) > 1 else high - low

    def sx(v: float) -> float:
        return plot_x0 + (v - low) / (high - low) * (plot_x1 - plot_x0)

    zero = sx(0.0)
    bars = []
    for i, source in enumerate(sources):
        score = float(source["score"])
        x_a, x_b = sorted((zero, sx(score)))
        bar = {"name": source["name"], "rank": source["rank"], "y": top + i * row, "h": row - 8,
               "x": round(x_a, 2), "w": round(max(x_b - x_a, 1.0), 2), "score": score,
               "value": f"{score:.4f}", "value_x": round(max(x_b, zero) + 5, 2),
               "colour": TYPE_COLOURS.get(source.get("task_type", ""), OTHER_COLOUR)}
        pair = intervals[i]
        if pair is not None:
            lo_x, hi_x = sx(pair[0]), sx(pair[1])
            bar |= {"value": f"{score:+.1f}%", "lo_x": round(lo_x, 2), "hi_x": round(hi_x, 2),
                    "value_x": round(max(hi_x, x_b, zero) + 5, 2), "unlikely": bool(learned[i].get("unlikely_to_help")),
                    "interval": f"{pair[0]:+.1f}% .. {pair[1]:+.1f}%",
                    "p_helps": f"{float(learned[i].get('p_helps', 0)):.0%}"}
        bars.append(bar)
    plot_bottom = top + len(sources) * row
    height = plot_bottom + bottom
    return {"width": width, "height": height, "bars": bars, "label_x": plot_x0 - 8, "zero": round(zero, 2),
            "plot_top": top - 4, "plot_bottom": plot_bottom, "plot_x0": plot_x0, "plot_x1": plot_x1,
            "ticks": [{"x": round(sx(t), 2), "label": tick_label(t, step)} for t in ticks],
            "axis_label": _axis_label(method), "font": font}


def _axis_label(method: str) -> str:
    label = RANKING_METHODS.get(method).score_label if method in RANKING_METHODS else "score"
    return "cosine similarity" if label == "similarity" else label


def map_figure(data: dict[str, Any], ranked: dict[str, int] | None = None) -> dict[str, Any] | None:
    """Scaled points, labels placed without overlaps where possible, and a legend for the task-space map."""
    points = data.get("points") or []
    if not points:
        return None
    ranked = ranked or {}
    width, height, font = 600.0, 440.0, 12.0
    target = data.get("target")
    xs = [p["x"] for p in points] + ([target["x"]] if target else [])
    ys = [p["y"] for p in points] + ([target["y"]] if target else [])
    left, right, top, bottom = 40.0, width - 14, 14.0, height - 40

    def scale(values: list[float], lo_px: float, hi_px: float) -> Any:
        lo, hi = min(values), max(values)
        span = hi - lo
        margin = 0.08 * span
        lo, hi = lo - margin, hi + margin

        def to_px(v: float) -> float:
            return (lo_px + hi_px) / 2 if span <= 0 else lo_px + (v - lo) / (hi - lo) * (hi_px - lo_px)
        return to_px

    sx, sy = scale(xs, left, right), scale(ys, bottom, top)  # PC2 up
    marks: list[dict[str, Any]] = []
    for p in points:
        marks.append({"name": p["name"], "task_type": p["task_type"], "num_train": p["num_train"],
                      "cx": round(sx(p["x"]), 2), "cy": round(sy(p["y"]), 2), "rank": ranked.get(p["name"]),
                      "colour": TYPE_COLOURS.get(p["task_type"], OTHER_COLOUR), "r": 6 if p["name"] in ranked else 5})
    target_mark = None
    if target:
        cx, cy = sx(target["x"]), sy(target["y"])
        star = []
        for k in range(10):
            angle = -math.pi / 2 + k * math.pi / 5
            r = 11.0 if k % 2 == 0 else 4.6
            star.append(f"{cx + r * math.cos(angle):.2f},{cy + r * math.sin(angle):.2f}")
        target_mark = {"cx": round(cx, 2), "cy": round(cy, 2), "points": " ".join(star), "r": 11,
                       "name": target["name"], "text": f"target: {target['name']}"}
    order = sorted(marks, key=lambda m: (m["rank"] is None, m["rank"] or 0, m["name"]))
    for m in order:
        m["text"] = f"{m['rank']}. {m['name']}" if m["rank"] else m["name"]
    _place_labels(([target_mark] if target_mark else []) + order, font, (2.0, 2.0, width - 2, height - 22))
    present = []
    for task_type in TASK_TYPES:
        if any(m["task_type"] == task_type for m in marks):
            present.append({"label": TYPE_LABELS[task_type], "colour": TYPE_COLOURS[task_type]})
    others = sorted({m["task_type"] for m in marks} - set(TASK_TYPES))
    present += [{"label": t or "unknown", "colour": OTHER_COLOUR} for t in others]
    explained = data.get("explained_variance") or [0.0, 0.0]
    return {"width": width, "height": height, "marks": marks, "target": target_mark, "legend": present,
            "has_ranked": bool(ranked), "x_axis": f"PC1 ({100 * explained[0]:.0f}% of variance)",
            "y_axis": f"PC2 ({100 * explained[1]:.0f}% of variance)", "font": font,
            "frame": {"x": left - 12, "y": top - 6, "w": right - left + 18, "h": bottom - top + 16}}


_DIRECTIONS = [(1, 0), (-1, 0), (0, -1), (0, 1), (0.75, -0.75), (-0.75, -0.75), (0.75, 0.75), (-0.75, 0.75)]


def _place_labels(marks: list[dict[str, Any]], font: float, bounds: tuple[float, float, float, float]) -> None:
    """Greedy: each label (in the order given) takes the nearest spot that overlaps no point and no
    label placed before it, trying eight directions at growing distances; far spots get a leader line.

    Labels never overlap: where a crowd (typically around the target) leaves no free spot, the label
    of an unranked source is left out (its name stays in the point's tooltip); the target's and the
    ranked sources' labels, placed first, take the least-overlapping spot as before."""
    obstacles = [(m["cx"] - m["r"] - 1, m["cy"] - m["r"] - 1, m["cx"] + m["r"] + 1, m["cy"] + m["r"] + 1)
                 for m in marks]
    placed: list[tuple[float, float, float, float]] = []
    for mark in marks:
        w, h = text_width(mark["text"], font), font + 3
        base = mark["r"] + 3
        chosen: tuple[tuple[float, float, float, float], int] | None = None
        fallback: tuple[float, tuple[float, float, float, float], int] | None = None
        for ring, distance in enumerate((base, base + 14, base + 30, base + 50, base + 76, base + 110)):
            for dx, dy in _DIRECTIONS:
                bx = mark["cx"] + dx * distance + math.copysign(w / 2, dx) * (dx != 0)
                by = mark["cy"] + dy * distance + math.copysign(h / 2, dy) * (dy != 0)
                box = (bx - w / 2, by - h / 2, bx + w / 2, by + h / 2)
                if box[0] < bounds[0] or box[2] > bounds[2] or box[1] < bounds[1] or box[3] > bounds[3]:
                    continue
                overlap = sum(_overlap(box, other) for other in placed + obstacles)
                if overlap == 0:
                    chosen = (box, ring)
                    break
                cost = overlap + 3 * distance
                if fallback is None or cost < fallback[0]:
                    fallback = (cost, box, ring)
            if chosen is not None:
                break
        if chosen is None and not mark.get("rank") and not str(mark.get("text", "")).startswith("target: "):
            mark.update(label=None, lx=None, ly=None, anchor="middle", leader=None)  # tooltip only
            continue
        if chosen is None:
            chosen = (fallback[1], fallback[2]) if fallback is not None else (
                (mark["cx"] + base, mark["cy"] - h / 2, mark["cx"] + base + w, mark["cy"] + h / 2), 0)
        box, ring = chosen
        placed.append(box)
        mark.update(label=mark["text"], lx=round((box[0] + box[2]) / 2, 2), anchor="middle", leader=None,
                    ly=round((box[1] + box[3]) / 2 + font * 0.35, 2))
        if ring > 0:
            px = min(max(mark["cx"], box[0]), box[2])
            py = min(max(mark["cy"], box[1]), box[3])
            mark["leader"] = {"x1": mark["cx"], "y1": mark["cy"], "x2": round(px, 2), "y2": round(py, 2)}


def _overlap(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return w * h if w > 0 and h > 0 else 0.0


def _library_map(library: LibraryDep, settings: Any, method: str, ranking: StoredRanking | None = None
                 ) -> tuple[dict[str, Any] | None, str | None]:
    result = (ranking.result or {}) if ranking is not None else {}
    try:
        data = library_map(library.store, method, model_name=result.get("model_name"),
                           target=result.get("target"), data_dir=settings.data_dir)
    except LibraryError as exc:
        return None, str(exc)
    return data, None


# -- pages -----------------------------------------------------------------------------------------

@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def upload_page(request: Request, settings: SettingsDep, library: LibraryDep) -> HTMLResponse:
    from library.ranker import default_method
    from library.ranker_store import RankerStore

    config = {"aliases": {k: list(v) for k, v in _TEXT_ALIASES.items()}, "fields": FIELDS_BY_TYPE,
              "maxUploadBytes": settings.max_upload_bytes, "keysRequired": bool(settings.api_key_set)}
    return render(request, "upload.html", {
        "title": "Rank source tasks", "methods": ranking_methods(default_method(RankerStore.for_engine(library.store.engine))),
        "task_types": TASK_TYPES,
        "config_json": json.dumps(config).replace("</", "<\\/"), "library_tasks": len(library.store.list_tasks()),
        "keys_required": bool(settings.api_key_set), "max_upload_mb": settings.max_upload_bytes / 2**20})


@router.get("/jobs/view", response_class=HTMLResponse, include_in_schema=False)
def jobs_page(request: Request, jobs: JobsDep, settings: SettingsDep, owner: Reader,
              limit: int = Query(50, ge=1, le=500)) -> HTMLResponse:
    found = jobs.list_jobs(owner=owner if settings.per_key_ownership else None, limit=limit)
    names: dict[str, str] = {}
    rows = []
    for job in found:
        if job.dataset_id and job.dataset_id not in names:
            record = jobs.get_dataset(job.dataset_id)
            names[job.dataset_id] = record.name if record else "(deleted)"
        public = job_public(job)
        rows.append({"job": public, "dataset": names.get(job.dataset_id or "", ""),
                     "ranking_id": _ranking_id_of(job) if job.kind == "rank" else None,
                     "method": job.params.get("method"), "name": job.params.get("name")})
    return render(request, "jobs.html", {"title": "Jobs", "rows": rows, "limit": limit})


@router.get("/jobs/{job_id}/view", response_class=HTMLResponse, include_in_schema=False)
def job_page(job_id: str, request: Request, jobs: JobsDep, settings: SettingsDep, owner: Reader) -> HTMLResponse:
    job = jobs.get_job(job_id)
    if job is None or not visible(owner, job.owner, settings):
        return not_found(request, f"job {job_id}")
    dataset = jobs.get_dataset(job.dataset_id) if job.dataset_id else None
    public = job_public(job)
    return render(request, "job.html", {
        "title": f"Job {job.id[:8]}", "job": public, "dataset": dataset, "method": job.params.get("method"),
        "ranking_id": _ranking_id_of(job) if job.kind == "rank" else None})


@router.get("/rankings/{ranking_id}/view", response_class=HTMLResponse, include_in_schema=False,
            response_model=None)
def ranking_page(ranking_id: str, request: Request, jobs: JobsDep, library: LibraryDep, settings: SettingsDep,
                 owner: Reader, sort: Literal["rank", "gain_per_minute"] = "rank") -> HTMLResponse | RedirectResponse:
    ranking = _visible_ranking(jobs, settings, owner, ranking_id)
    if ranking is None:
        return not_found(request, f"ranking {ranking_id}")
    public = with_estimates(ranking_public(ranking, jobs), jobs, settings)
    if public.sources is None and public.state in ("queued", "running"):
        return RedirectResponse(f"/jobs/{ranking.job_id}/view", status_code=303)
    dataset = jobs.get_dataset(ranking.dataset_id)
    sources = [s.model_dump() for s in public.sources or []]
    info = public.info or {}
    estimates = info.get("estimates") or {}
    learned = bool(sources) and "expected_gain" in (sources[0]["details"].get("learned") or {})
    for s in sources:
        s["estimate"] = estimates.get(s["name"])
        s["why"] = RANKING_METHODS.get(ranking.method).explain(s["details"]) if ranking.method in RANKING_METHODS \
            else ""
    if sort == "gain_per_minute" and estimates:
        sources.sort(key=lambda s: -((s["estimate"] or {}).get("gain_per_minute") or -math.inf))
    figure = map_data = map_error = None
    if sources:
        map_data, map_error = _library_map(library, settings, ranking.method, ranking)
        if map_data is not None:
            figure = map_figure(map_data, {s["name"]: s["rank"] for s in sources})
    return render(request, "ranking.html", {
        "title": f"Ranking · {(public.target or {}).get('name') or (dataset.name if dataset else ranking_id)}",
        "ranking": public, "dataset": dataset, "sources": sources,
        "parts": [] if learned else detail_parts(sources), "learned": learned, "info": info, "sort": sort,
        "total_minutes": round(sum((s["estimate"] or {}).get("minutes", 0) for s in sources), 1),
        "bars": bar_chart(sources, ranking.method) if sources else None, "map": map_data, "figure": figure,
        "map_error": map_error, "method_label": METHOD_LABELS.get(ranking.method, ranking.method)})


@router.get("/library/view", response_class=HTMLResponse, include_in_schema=False)
def library_page(request: Request, library: LibraryDep, settings: SettingsDep,
                 method: MapMethod = "textemb") -> HTMLResponse:
    tasks = [task_public(t) for t in library.store.list_tasks()]
    map_data, map_error = _library_map(library, settings, method)
    counts: dict[str, int] = {}
    for task in tasks:
        counts[task.task_type] = counts.get(task.task_type, 0) + 1
    return render(request, "library.html", {
        "title": "Library", "tasks": tasks, "map": map_data, "map_error": map_error,
        "figure": map_figure(map_data) if map_data else None, "method": method,
        "map_methods": [m.name for m in RANKING_METHODS if m.name == m.map_basis], "counts": counts,
        "version": library.store.version()})


# -- data endpoints --------------------------------------------------------------------------------

@router.get("/library/map", responses={404: {"description": "No such ranking"},
                                       422: {"description": "No embeddings for that method"}})
def library_map_json(library: LibraryDep, jobs: JobsDep, settings: SettingsDep, owner: Reader,
                     method: MapMethod | None = None, ranking_id: str | None = None) -> JSONResponse:
    """2-D PCA of the library's task embeddings (one point per task), with a ranking's target when asked.

    `method` picks the vectors (the ensemble maps TextEmb; TaskEmb concatenates its L2-normalised
    components); with `ranking_id` it defaults to the ranking's method and the target is projected
    from the worker's embedding cache (`target` is null with a `target_note` when it is not there).
    """
    ranking = _ranking_or_404(jobs, settings, owner, ranking_id) if ranking_id else None
    chosen = method or (ranking.method if ranking is not None else "textemb")
    data, error = _library_map(library, settings, chosen, ranking)
    if data is None:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, {"message": error})
    return JSONResponse(data)


def _finished(jobs: JobsDep, ranking: StoredRanking) -> dict[str, Any]:
    public = ranking_public(ranking, jobs)
    if public.sources is None:
        raise HTTPException(status.HTTP_409_CONFLICT, {"message": f"ranking {ranking.id} is {public.state}; "
                                                                   "it has no result to export yet"})
    return public.model_dump(mode="json")


@router.get("/rankings/{ranking_id}/export.csv", response_class=Response,
            responses={200: {"content": {"text/csv": {}}}, 404: {}, 409: {}})
def export_csv(ranking_id: str, jobs: JobsDep, settings: SettingsDep, owner: Reader) -> Response:
    """The ranked sources as CSV: rank, name, task_type, num_train, score, then `<part>_rank` and
    `<part>_similarity` for each method (ensemble) or TaskEmb component."""
    body = _finished(jobs, _ranking_or_404(jobs, settings, owner, ranking_id))
    sources = body["sources"]
    parts = detail_parts(sources)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["rank", "name", "task_type", "num_train", "score"]
                    + [f"{p}_{k}" for p in parts for k in ("rank", "similarity")])
    for s in sources:
        details = s.get("details") or {}
        writer.writerow([s["rank"], s["name"], s["task_type"], s["num_train"], repr(float(s["score"]))]
                        + [v for p in parts for v in (details.get(p, {}).get("rank", ""),
                                                      details.get(p, {}).get("similarity", ""))])
    return Response(out.getvalue(), media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="ranking-{ranking_id}.csv"'})


@router.get("/rankings/{ranking_id}/export.json", responses={404: {}, 409: {}})
def export_json(ranking_id: str, jobs: JobsDep, settings: SettingsDep, owner: Reader) -> Response:
    """The ranking as a JSON file (the body of `GET /rankings/{id}`)."""
    body = _finished(jobs, _ranking_or_404(jobs, settings, owner, ranking_id))
    return Response(json.dumps(body, indent=2), media_type="application/json",
                    headers={"Content-Disposition": f'attachment; filename="ranking-{ranking_id}.json"'})
