"""GET /ranker: the learned ranker's active version, what it was trained on, how it validated."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from app.deps import JobsDep, Reader
from app.schemas import RankerPublic
from library.ranker import FEATURES, default_method, validation_table
from library.ranker_store import RankerStore

router = APIRouter(tags=["ranker"])


def _default_reason(method: str) -> str:
    """Why the default is what it is: the active learned version, or the shipped matrix's choice."""
    from library.methods import DEFAULT_CHOICE

    if method == "learned":
        return "the active learned version beat every unlearned method on enough informative targets"
    return (f"chosen from the shipped transfer matrix (library/default/default_method.json): {DEFAULT_CHOICE.reason}; "
            "the ensemble ranks targets it cannot")


def ranker_public(jobs: Any) -> RankerPublic:
    store = RankerStore.for_engine(jobs.engine)
    versions = store.versions()
    active = next((v for v in versions if v.active), None)
    summary = active.summary() if active is not None else None
    return RankerPublic(
        active=summary, versions=[{"version": v.id, "active": v.active, "status": v.status,
                                   "candidate": v.spec.get("candidate"), "fitted_at": v.created_at.isoformat(),
                                   "rows": v.trained_on.get("rows"), "note": v.note} for v in versions],
        validation_table=validation_table(active.validation) if active is not None else [],
        criteria=(active.validation.get("criteria") or {}) if active is not None else {},
        features=FEATURES, transfer_results=store.count_results(), default_method=default_method(store),
        default_reason=_default_reason(default_method(store)),
        note=None if active is not None else "no learned ranker is fitted yet: `taskrank ranker fit` (the `learned` "
                                             "method ranks by the ensemble until then)")


@router.get("/ranker", response_model=RankerPublic)
def get_ranker(jobs: JobsDep, owner: Reader) -> RankerPublic:
    """The active version (its training rows, leave-one-target-out figures and fitting time), every version,
    and how many transfer results have been recorded."""
    return ranker_public(jobs)
