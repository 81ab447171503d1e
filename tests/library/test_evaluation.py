"""Selection-quality metrics on small hand-computed cases."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from library.evaluation import (
    Transfer,
    TransferTable,
    datasize_order,
    evaluate,
    load_transfer_table,
    ndcg_at_k,
    regret_at_k,
    rho,
)

LOG2_3 = math.log2(3)  # 1.5849625
LOG2_5 = math.log2(5)  # 2.3219281

# One target, baseline 50: scores a 60, b 55, c 50, d 45
# gains (score - 50) / 50 * 100: a +20, b +10, c 0, d -10
# relevance = gain - min(gain) = gain + 10: a 30, b 20, c 10, d 0
GAINS = {"a": 20.0, "b": 10.0, "c": 0.0, "d": -10.0}
SCORES = {"a": 60.0, "b": 55.0, "c": 50.0, "d": 45.0}


def test_ndcg_hand_computed() -> None:
    # predicted b, a, d @3: DCG = 20/log2(2) + 30/log2(3) + 0/log2(4) = 20 + 18.92789 = 38.92789
    # ideal a, b, c @3: IDCG = 30/1 + 20/log2(3) + 10/log2(4) = 30 + 12.61860 + 5 = 47.61860
    expected = (20 + 30 / LOG2_3) / (30 + 20 / LOG2_3 + 5)
    assert ndcg_at_k(["b", "a", "d", "c"], GAINS, k=3) == pytest.approx(expected)
    assert expected == pytest.approx(0.817493, abs=1e-6)
    assert ndcg_at_k(["a", "b", "c", "d"], GAINS, k=3) == pytest.approx(1.0)
    # unknown names are dropped: ["zzz", "c", "a"] -> c, a @2: DCG = 10 + 30/log2(3); IDCG = 30 + 20/log2(3)
    assert ndcg_at_k(["zzz", "c", "a"], GAINS, k=2) == pytest.approx((10 + 30 / LOG2_3) / (30 + 20 / LOG2_3))
    # worst source first contributes nothing; all-equal gains -> IDCG 0 -> 1.0 by convention
    assert ndcg_at_k(["d"], GAINS, k=1) == 0.0
    assert ndcg_at_k(["x", "y"], {"x": 3.0, "y": 3.0}, k=2) == 1.0


def test_rho_hand_computed() -> None:
    assert rho(["b", "a", "d", "c"], GAINS) == 2  # best source a is 2nd
    assert rho(["a", "b"], GAINS) == 1
    assert rho(["q", "b", "c"], GAINS) == 4  # best never predicted: counted last (4 measured sources)
    assert rho(["b", "x", "y"], {"x": 5.0, "y": 5.0, "b": 1.0}) == 2  # tie for best: the better placed


def test_regret_hand_computed() -> None:
    # top-1 = b: (60 - 55) / 60 * 100 = 8.333%
    assert regret_at_k(["b", "a", "c"], SCORES, k=1) == pytest.approx(5 / 60 * 100)
    # top-3 = b, d, c: best of them 55 -> same 8.333%; top-2 containing a -> 0
    assert regret_at_k(["b", "d", "c", "a"], SCORES, k=3) == pytest.approx(8.333333, abs=1e-5)
    assert regret_at_k(["c", "a"], SCORES, k=2) == 0.0
    # nothing measured predicted: the worst score, (60 - 45) / 60 * 100 = 25%
    assert regret_at_k(["zzz"], SCORES, k=3) == pytest.approx(25.0)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "transfer.csv"
    path.write_text(text)
    return path


def test_load_transfer_table_averages_seeds(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "source,target,score,baseline_score,seed,notes\na,T,60,50,1,x\na,T,62,52,2,y\n\nb, T ,45,50,1,\n",
    )
    table = load_transfer_table(path)
    assert table.targets() == ["T"] and table.sources("T") == ["a", "b"]
    assert table.transfers["T"]["a"] == Transfer(score=61.0, baseline_score=51.0, runs=2)
    # a: (61 - 51) / 51 * 100 = 19.6078%; b: (45 - 50) / 50 * 100 = -10%
    assert table.gains("T") == pytest.approx({"a": 1000 / 51, "b": -10.0})
    assert table.scores("T") == {"a": 61.0, "b": 45.0}


def test_load_transfer_table_keeps_only_chosen_targets(tmp_path: Path) -> None:
    """A target the regime did not learn (baseline 0: gain undefined) can be left out."""
    path = _write(tmp_path, "source,target,score,baseline_score\na,T,60,50\na,U,0,0\nb,T,40,50\n")
    with pytest.raises(ValueError, match="line 3: baseline_score must be non-zero"):
        load_transfer_table(path)
    table = load_transfer_table(path, targets={"T"})
    assert table.targets() == ["T"] and table.gains("T") == pytest.approx({"a": 20.0, "b": -20.0})
    with pytest.raises(ValueError, match="no rows for target.*V"):
        load_transfer_table(path, targets={"T", "V"})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("source,target,score\na,T,1\n", "line 1: missing column.*baseline_score"),
        ("source,target,score,baseline_score\na,T,1,2\na,T,abc,2\n", "line 3: score='abc' is not a number"),
        ("source,target,score,baseline_score\na,T,1,2\n,T,1,2\n", "line 3: source and target"),
        ("source,target,score,baseline_score\na,T,1,0\n", "line 2: baseline_score must be non-zero"),
        ("source,target,score,baseline_score\na,T,nan,2\n", "line 2: .*finite"),
        ("source,target,score,baseline_score\na,T,1\n", "line 2: baseline_score is missing"),
        ("source,target,score,baseline_score\n", "no transfer rows"),
    ],
)
def test_load_transfer_table_errors(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_transfer_table(_write(tmp_path, text))


def _table() -> TransferTable:
    # T1: the GAINS/SCORES case above (baseline 50).
    # T2: baseline 100, a 80 (gain -20), b 100 (gain 0) -> relevance a 0, b 20.
    t1 = {s: Transfer(score, 50.0, 1) for s, score in SCORES.items()}
    t2 = {"a": Transfer(80.0, 100.0, 1), "b": Transfer(100.0, 100.0, 1)}
    return TransferTable({"T1": t1, "T2": t2})


def test_evaluate_method_and_datasize_baseline() -> None:
    rankings = {"m": {"T1": ["a", "b", "c", "d"], "T2": ["a", "b", "unknown"]}}
    sizes = {"a": 5, "b": 50, "c": 500, "d": 5000}
    out = evaluate(_table(), rankings, k_ndcg=5, k_regret=1, source_sizes=sizes)
    assert out["targets"] == ["T1", "T2"]

    m = out["methods"]["m"]
    # T1 perfect: ndcg 1, rho 1, regret 0.
    # T2 a, b: DCG = 0/1 + 20/log2(3) = 12.6186; IDCG = 20/1 -> 0.63093; rho 2; regret@1 (100-80)/100 = 20%
    t2_ndcg = (20 / LOG2_3) / 20
    assert m["per_target"]["T2"] == pytest.approx({"ndcg": t2_ndcg, "rho": 2.0, "regret": 20.0})
    assert m["ndcg"] == pytest.approx((1 + t2_ndcg) / 2)
    assert m["rho"] == pytest.approx(1.5) and m["regret"] == pytest.approx(10.0)

    d = out["methods"]["datasize"]
    # T1 by size d, c, b, a (the worst order): DCG = 0/1 + 10/log2(3) + 20/log2(4) + 30/log2(5) = 29.2295
    # IDCG = 30 + 20/log2(3) + 10/2 + 0 = 47.6186 -> 0.61383; rho 4; regret@1 (60-45)/60 = 25%
    t1_ndcg = (10 / LOG2_3 + 20 / 2 + 30 / LOG2_5) / (30 + 20 / LOG2_3 + 5)
    assert d["per_target"]["T1"] == pytest.approx({"ndcg": t1_ndcg, "rho": 4.0, "regret": 25.0})
    # T2 by size b, a: perfect.
    assert d["per_target"]["T2"] == pytest.approx({"ndcg": 1.0, "rho": 1.0, "regret": 0.0})
    assert d["rho"] == pytest.approx(2.5) and d["regret"] == pytest.approx(12.5)
    assert datasize_order(["x", "a", "b"], sizes) == ["b", "a", "x"]  # unknown size last


def test_random_baseline_is_seeded_expectation() -> None:
    rankings = {"m": {"T1": ["a"], "T2": ["b"]}}
    first = evaluate(_table(), rankings, k_regret=1, seed=3)["methods"]["random"]
    assert first == evaluate(_table(), rankings, k_regret=1, seed=3)["methods"]["random"]
    # T2 has two sources: the best (b) is first in half the permutations -> E[rho] = 1.5,
    # E[regret@1] = 0.5 * 20% = 10%, E[ndcg] = 0.5 * 1 + 0.5 * 0.63093 = 0.81546
    t2 = first["per_target"]["T2"]
    assert t2["rho"] == pytest.approx(1.5, abs=0.15)
    assert t2["regret"] == pytest.approx(10.0, abs=1.5)
    assert t2["ndcg"] == pytest.approx(0.5 + 0.5 * (1 / LOG2_3), abs=0.03)
    # T1 has four sources: E[rho] = (1 + 2 + 3 + 4) / 4 = 2.5
    assert first["per_target"]["T1"]["rho"] == pytest.approx(2.5, abs=0.3)
    assert "datasize" not in evaluate(_table(), rankings)["methods"]


def test_evaluate_rejects_missing_targets_and_reserved_names() -> None:
    with pytest.raises(ValueError, match="no ranking for target.*T2"):
        evaluate(_table(), {"m": {"T1": ["a"]}})
    with pytest.raises(ValueError, match="reserved"):
        evaluate(_table(), {"random": {"T1": ["a"], "T2": ["a"]}})
