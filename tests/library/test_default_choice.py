"""The service's unlearned default: chosen from the shipped matrix's figures by a fixed rule, recorded
beside the matrix, and read back (the incumbent when the record is missing or names an unknown method)."""

from __future__ import annotations

import json
from pathlib import Path

from library.default_choice import (
    INCUMBENT,
    MIN_TARGETS,
    SHIPPED,
    DefaultChoice,
    candidates,
    choose,
    shipped_choice,
    write_choice,
)
from library.methods import DEFAULT_METHOD, RANKING_METHODS

TARGETS = ["a", "b", "c", "d", "e"]
ELIGIBLE = candidates(RANKING_METHODS)


def test_candidates_are_offline_unlearned_methods() -> None:
    assert "logme" not in ELIGIBLE  # needs every source's fine-tuned checkpoint
    assert "learned" not in ELIGIBLE  # trained on the matrix it would be judged on
    assert {"ensemble", "esm_logme", "textemb"} <= set(ELIGIBLE)


def test_a_challenger_replaces_the_incumbent_only_past_both_margins() -> None:
    wins = choose({"ensemble": 0.52, "esm_logme": 0.82, "logme": 0.95, "datasize": 0.43}, TARGETS, ELIGIBLE)
    assert wins.method == "esm_logme" and "+0.300 over ensemble" in wins.reason  # logme scores higher: not eligible
    close = choose({"ensemble": 0.52, "esm_logme": 0.56, "datasize": 0.30}, TARGETS, ELIGIBLE)
    assert close.method == INCUMBENT and "below the margins" in close.reason
    near_size = choose({"ensemble": 0.40, "esm_logme": 0.50, "datasize": 0.45}, TARGETS, ELIGIBLE)
    assert near_size.method == INCUMBENT  # +0.10 over the incumbent but only +0.05 over DataSize
    best = choose({"ensemble": 0.70, "esm_logme": 0.60, "datasize": 0.40}, TARGETS, ELIGIBLE)
    assert best.method == INCUMBENT and "highest" in best.reason


def test_too_few_informative_targets_keep_the_incumbent() -> None:
    few = choose({"ensemble": 0.5, "esm_logme": 0.9, "datasize": 0.4}, TARGETS[: MIN_TARGETS - 1], ELIGIBLE)
    assert few.method == INCUMBENT and f"fewer than {MIN_TARGETS}" in few.reason


def test_the_record_round_trips_and_a_bad_one_falls_back(tmp_path: Path) -> None:
    path = tmp_path / "default_method.json"
    assert shipped_choice(RANKING_METHODS.names(), path).method == INCUMBENT  # missing
    write_choice(DefaultChoice("esm_logme", "why", {"esm_logme": 0.8}, TARGETS), path)
    read = shipped_choice(RANKING_METHODS.names(), path)
    assert (read.method, read.reason, read.targets) == ("esm_logme", "why", TARGETS)
    assert "Fixed on 2026-12-05" in json.loads(path.read_text())["rule"]
    path.write_text(json.dumps({"method": "no_such_method"}))
    assert shipped_choice(RANKING_METHODS.names(), path).method == INCUMBENT
    path.write_text("{not json")
    assert "JSONDecodeError" in shipped_choice(RANKING_METHODS.names(), path).reason


def test_the_shipped_record_is_what_the_rule_gives_on_its_own_figures() -> None:
    """A hand edit of the record (or a rule changed without regenerating it) fails here."""
    assert SHIPPED.is_file(), "library/default/default_method.json: run bench/selection_report.py --readme"
    data = json.loads(SHIPPED.read_text())
    again = choose(data["figures"], data["targets"], ELIGIBLE)
    assert again.method == data["method"] == DEFAULT_METHOD
    assert data["about"]["runs"] > 0 and data["about"]["matrix"].endswith("transfer_matrix.csv")
