"""The words `bench/selection_report.py` writes into the README around its tables: the learned ranker
against its bars, and how far the matrix got and what it cost (both read from data, never typed in)."""

from __future__ import annotations

from typing import Any

from bench.selection_report import coverage_and_cost, per_target_table, ranker_bars


def _validation(**over: Any) -> dict[str, Any]:
    criteria = {"judged_on": "nested", "headline_targets": 7, "over": {"datasize": 0.333, "source_prior": 0.043,
                                                                         "esm_logme": -0.062, "semb": 0.2},
                "datasize_margin_ok": True, "source_prior_margin_ok": False, "top1_helps": 6 / 7, "top1_ok": True,
                "coverage": 0.795, "nominal_coverage": 0.8, "beats_every_unlearned": False,
                "min_default_targets": 5, "may_be_default": False}
    return {"criteria": {**criteria, **over}}


def test_ranker_bars_name_each_bar_and_the_method_it_loses_to() -> None:
    text = "\n".join(ranker_bars(_validation()))
    assert "over DataSize +0.333 (bar +0.100): reached" in text
    assert "over the source prior +0.043 (bar +0.050): not reached" in text
    assert "top-1 helps on 86% of them (bar 80%): reached" in text and "interval covers 80%" in text
    assert "does not beat every unlearned method (esm_logme by 0.062 NDCG@5)" in text


def test_ranker_bars_when_it_may_be_the_default_or_is_short_of_targets() -> None:
    wins = {"over": {"datasize": 0.3, "source_prior": 0.1}, "beats_every_unlearned": True}
    assert "is the service's default" in "".join(ranker_bars(_validation(**wins, may_be_default=True)))
    few = "".join(ranker_bars(_validation(**wins, headline_targets=3)))
    assert "on fewer than 5 informative targets" in few
    assert ranker_bars(None) == [] and ranker_bars({"criteria": {}}) == []


def test_coverage_and_cost_from_rows_and_sidecar() -> None:
    runs = [{"source": s, "target": t, "seed": seed, "score": 60.0, "baseline_score": 50.0, "seconds": 70.0}
            for t, sources in (("a", ("b", "c")), ("b", ("a",))) for s in sources for seed in (13, 14)]
    sidecar = {"sources": {"a": {"seconds": 100.0}, "b": {"seconds": 200.0}, "c": {"seconds": 300.0}},
               "targets": {"a": {}, "b": {}, "c": {}},
               "sessions": [{"device": "cpu", "units": 9, "wall_s": 3600.0, "source_s": 600.0, "target_s": 420.0}]}
    coverage, _, cost = coverage_and_cost(runs, sidecar)
    # a target is not its own source: a is complete with b and c
    assert coverage.startswith("**Coverage** (3 sources, 2 seeds): complete on 1 targets (a)")
    assert "b has 1 of 2 sources (missing c)" in coverage and coverage.endswith("not yet measured: c.")
    assert "a target run took 70 s (median; 70-70 s)" in cost and "(c slowest), 0.2 CPU-hours for 3 sources" in cost
    assert "Over 1 runner sessions" in cost and "1.0 h of wall time" in cost


def test_coverage_says_which_targets_wait_for_a_later_seed() -> None:
    """A target with every source at seeds 13, 14 is not complete once another has seed 15, and is not
    listed as missing sources either."""
    runs = [{"source": s, "target": t, "seed": seed, "score": 60.0, "baseline_score": 50.0}
            for t, s, seeds in (("a", "b", (13, 14, 15)), ("b", "a", (13, 14)), ("c", "a", (13, 14)), ("c", "b", (13,)))
            for seed in seeds]
    sidecar = {"sources": {"a": {}, "b": {}}, "targets": {"a": {}, "b": {}, "c": {}}}
    coverage = coverage_and_cost(runs, sidecar)[0]
    assert coverage.startswith("**Coverage** (2 sources, 3 seeds): complete on 1 targets (a); "
                               "every source at seeds 13, 14 only on 1 targets (b); ")
    assert coverage.endswith("c has 2 of 2 sources (b at fewer than 2 seeds; missing none).")


def test_per_target_table_shows_the_two_seed_verdict_once_a_third_seed_is_in() -> None:
    from library.evaluation import Run, informativeness

    runs = [Run("x", "T", seed, score, base, "accuracy") for seed, score, base in ((13, 55.0, 50.0), (14, 57.0, 52.0))]
    two_seeds = {"informativeness": informativeness(runs)}
    assert per_target_table(two_seeds)[-1].endswith("| 1 x 2 | yes |")
    three = {"informativeness": informativeness(runs + [Run("x", "T", 15, 50.0, 50.0, "accuracy")])}
    assert per_target_table(three)[-1].endswith("| 1 x 3 | no (seeds 13, 14 alone: yes, x +5.0 against 2.8) |")
