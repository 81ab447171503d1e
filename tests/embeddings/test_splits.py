"""embeddings.splits: the one hold-out that the worker, the API's check and the CLI share."""

from __future__ import annotations

import pytest

from embeddings.data import dataset_from_rows
from embeddings.splits import group_sizes, hold_out_dev, hold_out_error


def test_hold_out_is_deterministic_stratified_and_disjoint():
    rows = [{"text": f"t{i}", "label": "a" if i % 4 else "b"} for i in range(40)]
    dataset = dataset_from_rows(rows)
    train, dev = hold_out_dev(dataset, seed=13)
    again_train, again_dev = hold_out_dev(dataset, seed=13)
    assert dev.examples == again_dev.examples and train.examples == again_train.examples
    assert len(dev) == 8 and len(train) == 32
    assert sorted(e.label for e in dev.examples) == ["a"] * 6 + ["b"] * 2  # 20% of each label
    assert {e.text for e in train.examples}.isdisjoint(e.text for e in dev.examples)
    assert hold_out_dev(dataset, seed=14)[1].examples != dev.examples


def test_too_small_to_hold_out():
    tiny = dataset_from_rows([{"text": "a", "label": "x"}, {"text": "b", "label": "y"}])
    with pytest.raises(ValueError, match="the target has 2 rows: too few to hold out a dev split"):
        hold_out_dev(tiny, seed=13)
    assert hold_out_error(group_sizes("classification", 2, {"x": 1, "y": 1})) == (
        "the target has 2 rows: too few to hold out a dev split (upload more, or give dev_dataset_id)")
    assert hold_out_error(group_sizes("regression", 2, {})) is not None  # round(0.4) = 0 rows
    assert hold_out_error(group_sizes("regression", 3, {})) is None  # round(0.6) = 1 of 3 held out
    assert hold_out_error(group_sizes("classification", 10, {"x": 5, "y": 5})) is None
