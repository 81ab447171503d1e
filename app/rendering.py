"""How the pages render: the Jinja environment, its filters and labels, the navigation, and the SVG
geometry the charts share. Page routes (`app.routes.pages`, `app.routes.transfer_pages`, ...) import
from here, never from each other."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from markupsafe import Markup, escape

from embeddings.registry import EMBEDDING_METHODS
from embeddings.task_types import TASK_TYPE_NAMES
from embeddings.task_types import TASK_TYPES as TASK_TYPES_SPEC
from library.methods import DEFAULT_METHOD, RANKING_METHODS

templates = Jinja2Templates(directory=str(Path(__file__).resolve().parent / "templates"))



def ranking_methods(default: str = DEFAULT_METHOD) -> list[tuple[str, str, str]]:
    """(name, label, description) of every registered ranking method, the service's default first."""
    methods = sorted(RANKING_METHODS, key=lambda m: m.name != default)
    return [(m.name, m.label, m.description) for m in methods]


class _Labels(Mapping[str, str]):
    """Display names read from the registries when a page renders (a method registered later shows too)."""

    def _all(self) -> dict[str, str]:
        return {**{m.name: m.label for m in EMBEDDING_METHODS.values()}, **{m.name: m.label for m in RANKING_METHODS},
                "text": "TextEmb", "sentence": "SEmb"}  # single-vector component names

    def __getitem__(self, key: str) -> str:
        return self._all()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())


METHOD_LABELS = _Labels()
PART_LABELS = METHOD_LABELS  # ensemble parts and single-vector components
TASK_TYPES = list(TASK_TYPE_NAMES)
TYPE_LABELS = {t.value: spec.label for t, spec in TASK_TYPES_SPEC.items()}
TYPE_COLOURS = {"classification": "#2f6fdf", "regression": "#d9822b", "question_answering": "#1f9d6b",
                "sequence_labeling": "#c2397a"}
OTHER_COLOUR = "#6b7280"
FIELDS_BY_TYPE = {t.value: list(spec.fields) for t, spec in TASK_TYPES_SPEC.items()}


# -- helpers -----------------------------------------------------------------------------------

def render(request: Request, name: str, context: dict[str, Any], status_code: int = 200) -> HTMLResponse:
    return templates.TemplateResponse(request, name, {"nav": nav(request.url.path), **context},
                                      status_code=status_code)


def nav(path: str) -> list[dict[str, Any]]:
    items = [("Upload", "/", path == "/"), ("Library", "/library/view", path.startswith("/library/")),
             ("Jobs", "/jobs/view", path.startswith("/jobs/")), ("API docs", "/docs", False)]
    return [{"label": label, "href": href, "active": active} for label, href, active in items]


def not_found(request: Request, what: str) -> HTMLResponse:
    return render(request, "error.html", {"title": "Not found", "message": f"There is no {what}."},
                   status_code=404)


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def fmt_time(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if value else "–"


def fmt_int(value: int | None) -> str:
    return "–" if value is None else f"{value:,}"


def breakable(value: str) -> Markup:
    """Escaped, with line-break opportunities after dots and underscores (long component names)."""
    return Markup(re.sub(r"([._])", r"\1<wbr>", str(escape(value))))


def fmt_signed(value: float | None, decimals: int = 2) -> str:
    """`+1.25`, `-0.40`, and `0.00` for anything that rounds to zero (never a `-0.00`)."""
    if value is None:
        return "–"
    rounded = round(float(value), decimals)
    return f"{0.0:.{decimals}f}" if rounded == 0 else f"{rounded:+.{decimals}f}"


def gain_class(value: float | None, decimals: int = 2) -> str:
    """The CSS class of a gain as shown: a gain that rounds to zero is neither a gain nor a loss."""
    rounded = 0.0 if value is None else round(float(value), decimals)
    return "gain-pos" if rounded > 0 else "gain-neg" if rounded < 0 else "gain-zero"


templates.env.filters["duration"] = fmt_duration
templates.env.filters["signed"] = fmt_signed
templates.env.filters["gain_class"] = gain_class
templates.env.filters["when"] = fmt_time
templates.env.filters["thousands"] = fmt_int
templates.env.filters["breakable"] = breakable
templates.env.globals.update(type_labels=TYPE_LABELS, method_labels=METHOD_LABELS, part_labels=PART_LABELS)


def detail_parts(sources: list[dict[str, Any]]) -> list[str]:
    """Per-method or per-component columns, in the order the first source lists them."""
    parts: list[str] = []
    for source in sources:
        for part in source.get("details") or {}:
            if part not in parts:
                parts.append(part)
    return parts


# -- SVG geometry --------------------------------------------------------------------------------

def text_width(text: str, size: float) -> float:
    return 0.58 * size * len(text) + 2


def nice_ticks(low: float, high: float, count: int = 4) -> list[float]:
    if high <= low:
        return [low]
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(low / step - 1e-9) * step
    ticks = []
    value = first
    while value <= high + 1e-9 * step:
        ticks.append(round(value, 10))
        value += step
    return ticks


def tick_label(value: float, step: float) -> str:
    decimals = max(0, math.ceil(-math.log10(step) - 1e-9)) if step > 0 else 2
    if step > 0 and abs(round(step, decimals) - step) > 1e-12:
        decimals += 1
    return f"{value:.{min(decimals, 6)}f}"
