"""The learned ranker's tables on SQLite and PostgreSQL: results recorded once per job, versions kept,
one active at a time, rollback."""

from __future__ import annotations

import pytest

from library.ranker_store import RankerStore


def add(rstore: RankerStore, job_id: str, regime: str = "r1", score: float = 66.0):
    return rstore.add_result(job_id=job_id, batch_id="b", source="rte", target="mine", target_hash="a" * 64,
                             regime=regime, metric="accuracy", score=score, baseline_score=60.0,
                             runs=[{"seed": 1, "score": score, "baseline_score": 60.0}],
                             features={"semb_rank": 2.0}, target_facts={"rows": 40}, info={"seconds": [1.0]})


def test_results_once_per_job_and_by_regime(store_url: str) -> None:
    with RankerStore(store_url) as rstore:
        first = add(rstore, "j1")
        assert first is not None and first.relative_gain == pytest.approx(10.0)
        assert add(rstore, "j1") is None  # a redelivered job records nothing twice
        add(rstore, "j2", regime="other", score=54.0)
        assert rstore.recorded_jobs(["j1", "j2", "j3"]) == {"j1", "j2"}
        assert [r.job_id for r in rstore.results(regime="r1")] == ["j1"]
        assert rstore.count_results() == 2 and rstore.count_results(after_id=first.id) == 1
        assert rstore.results(regime="other")[0].relative_gain == pytest.approx(-10.0)


def test_versions_one_active_kept_and_rolled_back(store_url: str) -> None:
    with RankerStore(store_url) as rstore:
        assert rstore.active_version() is None and rstore.active_id() is None
        fields = {"regime": "r1", "sklearn_version": "1.9.1", "spec": {"candidate": "gbm"},
                  "trained_on": {"rows": 20}, "validation": {"methods": {}}}
        one = rstore.add_version(model=b"one", activate=True, **fields)
        two = rstore.add_version(model=b"two", activate=True, **fields)
        three = rstore.add_version(model=b"three", activate=False, status="rejected", **fields)
        assert rstore.active_id() == two.id and three.status == "rejected"
        assert [(v.id, v.active, v.status) for v in rstore.versions()] == [
            (one.id, False, "kept"), (two.id, True, "active"), (three.id, False, "rejected")]
        assert rstore.activate(one.id).active and rstore.active_id() == one.id
        assert rstore.model_bytes(one.id) == b"one"
        assert rstore.get_version(two.id).status == "kept"  # type: ignore[union-attr]
        with pytest.raises(LookupError):
            rstore.activate(999)
