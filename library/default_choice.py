"""The service's unlearned default ranking method: chosen from the shipped transfer matrix by a fixed rule.

A ranking request without a method gets `learned` once its active version validates as the default
(`library.ranker.criteria`); otherwise it gets the method this module names. Which one is not a matter
of taste: `bench/selection_report.py` applies `RULE` to the figures it measures on the shipped matrix
and records the choice, its inputs and the rule in `library/default/default_method.json`, which ships
with the package. The rule was fixed on 2026-12-05, before that day's matrix figures were computed.

Where the chosen method cannot rank a target (question answering for the LogME-based methods, a
library without the maps or vectors it reads), the incumbent (`INCUMBENT`) ranks it instead:
`resolve` says which, and why.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

INCUMBENT = "ensemble"  # the default before any matrix chose one; it ranks every target type
MIN_TARGETS = 5  # informative targets the figures must cover (as for the learned ranker's default)
OVER_INCUMBENT = 0.05  # NDCG@5 the challenger must gain over the incumbent ...
OVER_DATASIZE = 0.10  # ... and over "largest source first"
SHIPPED = Path(__file__).resolve().parent / "default" / "default_method.json"
RULE = (f"Candidates: the registered ranking methods that are not trained on the matrix and need nothing but "
        f"the shipped library (not logme, which needs every source's fine-tuned checkpoint). On the shipped "
        f"matrix's informative targets, the candidate with the highest mean NDCG@5 replaces the incumbent "
        f"({INCUMBENT}) when the figures cover at least {MIN_TARGETS} informative targets and it beats the "
        f"incumbent by at least {OVER_INCUMBENT:.2f} and DataSize by at least {OVER_DATASIZE:.2f}; otherwise the "
        f"incumbent stays. Fixed on 2026-12-05, before that day's figures.")


@dataclass(frozen=True)
class DefaultChoice:
    """The default the rule chose, and what it was chosen from."""

    method: str
    reason: str
    figures: dict[str, float] = field(default_factory=dict)  # mean NDCG@5 on the headline targets
    targets: list[str] = field(default_factory=list)  # the informative targets they cover
    about: dict[str, Any] = field(default_factory=dict)  # the matrix, its size, when and where measured


def candidates(methods: Iterable[Any]) -> list[str]:
    """The methods the rule may choose: not trained on the matrix, no per-source checkpoint needed."""
    return [m.name for m in methods if not m.trained and not m.needs_checkpoints]


def choose(figures: Mapping[str, float], targets: Iterable[str], eligible: Iterable[str]) -> DefaultChoice:
    """Apply `RULE` to per-method mean NDCG@5 `figures` (with `datasize` among them) on `targets`."""
    targets = list(targets)
    scored = {m: float(figures[m]) for m in eligible if m in figures and math.isfinite(float(figures[m]))}
    kept = {m: round(float(v), 4) for m, v in figures.items() if math.isfinite(float(v))}
    if INCUMBENT not in scored or "datasize" not in figures:
        return DefaultChoice(INCUMBENT, f"the figures lack {INCUMBENT} or datasize: the incumbent stays", kept, targets)
    if len(targets) < MIN_TARGETS:
        return DefaultChoice(INCUMBENT, f"{len(targets)} informative target(s), fewer than {MIN_TARGETS}: "
                                        "the incumbent stays", kept, targets)
    best = max(scored, key=lambda m: (scored[m], m == INCUMBENT))
    if best == INCUMBENT:
        return DefaultChoice(INCUMBENT, f"{INCUMBENT} has the highest NDCG@5 ({scored[best]:.3f})", kept, targets)
    over_incumbent = scored[best] - scored[INCUMBENT]
    over_datasize = scored[best] - float(figures["datasize"])
    margins = (f"{best} NDCG@5 {scored[best]:.3f}: {over_incumbent:+.3f} over {INCUMBENT}, "
               f"{over_datasize:+.3f} over DataSize on {len(targets)} informative targets")
    if over_incumbent >= OVER_INCUMBENT and over_datasize >= OVER_DATASIZE:
        return DefaultChoice(best, margins, kept, targets)
    return DefaultChoice(INCUMBENT, f"{margins}: below the margins ({OVER_INCUMBENT:.2f}, {OVER_DATASIZE:.2f}), "
                                    "the incumbent stays", kept, targets)


def write_choice(choice: DefaultChoice, path: Path = SHIPPED) -> None:
    """Record the choice beside the shipped matrix (`bench/selection_report.py`)."""
    path.write_text(json.dumps({"rule": RULE, **asdict(choice)}, indent=1) + "\n")


def shipped_choice(known: Iterable[str], path: Path = SHIPPED) -> DefaultChoice:
    """The recorded choice; the incumbent (with the reason) when the record is missing, unreadable or names
    a method this installation does not have."""
    try:
        data = json.loads(path.read_text())
        method = str(data["method"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return DefaultChoice(INCUMBENT, f"no usable record at {path.name} ({type(exc).__name__}): the incumbent")
    if method not in set(known):
        return DefaultChoice(INCUMBENT, f"{path.name} names {method!r}, which is not a registered method")
    return DefaultChoice(method, str(data.get("reason", "")), dict(data.get("figures", {})),
                         list(data.get("targets", [])), dict(data.get("about", {})))


def resolve(chosen: str, blocked_by: str | None) -> tuple[str, str | None]:
    """(method, note): `chosen` when nothing blocks it (`obstacle` gave None), else the incumbent, with a
    note saying why (shown with the ranking)."""
    if blocked_by is None or chosen == INCUMBENT:
        return chosen, None
    return INCUMBENT, f"ranked by the {INCUMBENT}: the default method, {chosen}, cannot rank this target ({blocked_by})"


def obstacle(method: Any, task_type: str, store: Any) -> str | None:
    """What keeps `method` (a `RankingMethod`) from ranking a target of `task_type` against the library in
    `store` (a `LibraryStore`), read from the library's tables without embedding anything; None: nothing."""
    if method.needs_rows and task_type == "question_answering":
        return "question answering has no row or token labels to score"
    for kind in method.needs_maps:
        if not store.has_maps(kind):
            return f"the library has no {kind} maps (`taskrank library build-esm` builds them)"
    present = {k.method for k in store.keys()}
    lacking = [m for m in method.needs_library if m not in present]
    if lacking:
        return f"the library has no {', '.join(lacking)} vectors"
    return None
