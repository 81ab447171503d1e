"""The transfer matrix view (clustering, informativeness, a user's runs) and the evaluation's lenient reading
(baseline <= 0 skipped, the `baseline` alias, the source prior, the informative headline)."""

from __future__ import annotations

import csv
import math
import random
from pathlib import Path
from types import SimpleNamespace

import pytest

from library.evaluation import (
    INFORMATIVE_RULE,
    Run,
    Transfer,
    TransferTable,
    evaluate,
    informativeness,
    load_transfer_matrix,
    load_transfer_table,
    source_prior,
    t975,
    undefined_baselines,
)
from library.transfers import (
    DEFAULT_MATRIX,
    UserBatch,
    build_view,
    cluster_order,
    load_view,
    matrix_cost,
    matrix_coverage,
    read_matrix_runs,
    select_cells,
    user_runs,
)

COLUMNS = ["source", "target", "seed", "score", "baseline_score", "metric"]


def write_matrix(path: Path, rows: list[tuple], baseline_column: str = "baseline_score") -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow([c if c != "baseline_score" else baseline_column for c in COLUMNS])
        writer.writerows(rows)
    return path


# Target INF: baselines 50 (seed 13), 52 (seed 14).
#   x: 60, 61 -> paired diffs 10, 9 (mean 9.5); y: 50.5, 52.5 -> diffs 0.5, 0.5
#   pooled sd: groups baseline [50, 52] SS 2, x [60, 61] SS 0.5, y [50.5, 52.5] SS 2; df 3
#   -> sqrt(4.5 / 3) = 1.2247; 2 x sd = 2.449 < 9.5: informative
# Target NOISE: baselines 50, 54; x: 51, 55 (diffs 1, 1); z: 30, 34 (diffs -20, -20)
#   pooled: baseline SS 8, x SS 8, z SS 8; df 3 -> sqrt(24 / 3) = 2.828; best gain 1 < 5.657: uninformative
#   (z's large loss does not count: the rule asks for a gain)
ROWS = [
    ("x", "INF", 13, 60.0, 50.0, "accuracy"), ("x", "INF", 14, 61.0, 52.0, "accuracy"),
    ("y", "INF", 13, 50.5, 50.0, "accuracy"), ("y", "INF", 14, 52.5, 52.0, "accuracy"),
    ("x", "NOISE", 13, 51.0, 50.0, "accuracy"), ("x", "NOISE", 14, 55.0, 54.0, "accuracy"),
    ("z", "NOISE", 13, 30.0, 50.0, "accuracy"), ("z", "NOISE", 14, 34.0, 54.0, "accuracy"),
]


def runs_of(rows: list[tuple]) -> list[Run]:
    return [Run(s, t, seed, score, base, metric) for s, t, seed, score, base, metric in rows]


# -- informativeness ------------------------------------------------------------------------------------

def test_informative_rule_hand_computed() -> None:
    info = informativeness(runs_of(ROWS), majority={"INF": 50.0})
    inf, noise = info["INF"], info["NOISE"]
    assert inf["seed_sd"] == pytest.approx(math.sqrt(1.5))
    assert inf["threshold_points"] == pytest.approx(2 * math.sqrt(1.5))
    assert inf["best_source"] == "x" and inf["best_gain_points"] == pytest.approx(9.5)
    assert inf["informative"] is True
    # t-interval over the paired differences 10, 9: 9.5 +- t(0.975, 1) * 0.7071 / sqrt(2) = 9.5 +- 6.3531
    assert inf["best_gain_ci95"] == pytest.approx([9.5 - 6.3531, 9.5 + 6.3531], abs=1e-3)
    assert inf["baseline_mean"] == pytest.approx(51.0) and inf["baseline_sd"] == pytest.approx(math.sqrt(2))
    assert inf["transfer_sd_mean"] == pytest.approx((math.sqrt(0.5) + math.sqrt(2)) / 2)
    assert inf["majority_score"] == 50.0 and noise["majority_score"] is None
    assert inf["best_relative_gain"] == pytest.approx((60.5 - 51.0) / 51.0 * 100)
    assert noise["seed_sd"] == pytest.approx(math.sqrt(8)) and noise["best_source"] == "x"
    assert noise["best_gain_points"] == pytest.approx(1.0) and noise["informative"] is False
    assert "2 x" in INFORMATIVE_RULE and "pooled" in INFORMATIVE_RULE


def test_one_seed_leaves_informativeness_undetermined() -> None:
    info = informativeness(runs_of([("x", "T", 13, 70.0, 50.0, None), ("y", "T", 13, 40.0, 50.0, None)]))
    assert info["T"]["seed_sd"] is None and info["T"]["informative"] is None
    assert info["T"]["best_gain_ci95"] is None and info["T"]["best_gain_points"] == pytest.approx(20.0)


# Target T with a third seed: baselines 50, 52, 50; x scores 55, 57, 50 (paired diffs 5, 5, 0).
#   seeds 13, 14 alone: pooled sd sqrt((2 + 2) / 2) = 1.414, bar 2.83 < gain 5: informative
#   all three: baseline SS 2.667, x SS 26, df 4 -> sd sqrt(7.1667) = 2.677, bar 5.354 > gain 3.333: not
THIRD_SEED = [("x", "T", 13, 55.0, 50.0, None), ("x", "T", 14, 57.0, 52.0, None), ("x", "T", 15, 50.0, 50.0, None)]


def test_a_third_seed_keeps_the_two_seed_verdict_beside_its_own() -> None:
    t = informativeness(runs_of(THIRD_SEED))["T"]
    assert t["seeds"] == 3 and t["informative"] is False
    assert t["seed_sd"] == pytest.approx(math.sqrt(28.6667 / 4), abs=1e-4)
    assert t["best_gain_points"] == pytest.approx(10 / 3)
    two = t["first_two_seeds"]
    assert two["seeds"] == [13, 14] and two["informative"] is True and two["best_source"] == "x"
    assert two["best_gain_points"] == pytest.approx(5.0) and two["threshold_points"] == pytest.approx(2 * math.sqrt(2))
    assert informativeness(runs_of(ROWS))["INF"]["first_two_seeds"] is None


def test_t_quantiles() -> None:
    assert t975(1) == pytest.approx(12.7062, abs=1e-4) and t975(10) == pytest.approx(2.2281, abs=1e-4)
    assert t975(60) == pytest.approx(2.0003, abs=3e-4) and t975(1000) == pytest.approx(1.9623, abs=3e-4)
    with pytest.raises(ValueError):
        t975(0)


# -- zero or negative baselines, the `baseline` alias -------------------------------------------------

def test_zero_and_negative_baselines_are_skipped_with_a_reason(tmp_path: Path) -> None:
    path = write_matrix(tmp_path / "m.csv", ROWS + [
        ("x", "ZERO", 13, 0.0, 0.0, "mcc"), ("y", "ZERO", 13, 5.0, 0.0, "mcc"),
        ("x", "NEG", 13, 3.0, -2.0, "mcc"), ("y", "NEG", 13, 1.0, 4.0, "mcc"),
    ])
    with pytest.raises(ValueError, match="baseline_score must be non-zero"):
        load_transfer_table(path)  # the strict reader is unchanged
    table = load_transfer_matrix(path)
    assert table.targets() == ["INF", "NOISE"]
    assert set(table.skipped) == {"ZERO", "NEG"}
    assert "relative gain is undefined" in table.skipped["ZERO"] and "lowest -2" in table.skipped["NEG"]
    rankings = {"m": {"INF": ["x", "y"], "NOISE": ["z", "x"]}}
    result = evaluate(table, rankings)
    assert result["skipped_targets"] == table.skipped and result["targets"] == ["INF", "NOISE"]
    view = build_view(read_matrix_runs(path)[0])
    assert set(view["skipped_targets"]) == {"ZERO", "NEG"}
    assert [t["name"] for t in view["targets"] if t["name"] in ("ZERO", "NEG")] == []


def test_evaluate_skips_an_in_memory_target_with_zero_baseline() -> None:
    table = TransferTable({"T": {"a": Transfer(60.0, 50.0, 1), "b": Transfer(40.0, 50.0, 1)},
                           "U": {"a": Transfer(0.0, 0.0, 1), "b": Transfer(3.0, 0.0, 1)}})
    result = evaluate(table, {"m": {"T": ["a", "b"]}})  # no ranking for U needed: it is skipped
    assert result["targets"] == ["T"] and "U" in result["skipped_targets"]
    assert result["methods"]["m"]["per_target"] == {"T": {"ndcg": 1.0, "rho": 1.0, "regret": 0.0}}
    with pytest.raises(ValueError, match="no target left"):
        evaluate(TransferTable({"U": table.transfers["U"]}), {})


def test_every_target_skipped_is_an_error(tmp_path: Path) -> None:
    path = write_matrix(tmp_path / "m.csv", [("x", "Z", 13, 1.0, 0.0, "mcc")])
    with pytest.raises(ValueError, match="every target was skipped.*Z"):
        load_transfer_matrix(path)


def test_baseline_alias(tmp_path: Path) -> None:
    plain = write_matrix(tmp_path / "plain.csv", ROWS)
    alias = write_matrix(tmp_path / "alias.csv", ROWS, baseline_column="baseline")
    assert load_transfer_table(alias).transfers == load_transfer_table(plain).transfers
    assert load_transfer_matrix(alias).runs == load_transfer_matrix(plain).runs
    assert read_matrix_runs(alias)[0] == read_matrix_runs(plain)[0]
    (tmp_path / "none.csv").write_text("source,target,score,base\na,T,1,2\n")
    with pytest.raises(ValueError, match=r"missing column\(s\) baseline_score \(or baseline\)"):
        load_transfer_table(tmp_path / "none.csv")


def test_sidecar_majority_is_read_beside_the_table(tmp_path: Path) -> None:
    path = write_matrix(tmp_path / "m.csv", ROWS)
    path.with_suffix(".json").write_text('{"targets": {"INF": {"majority_score": 30.5, "metric": "accuracy"}}}')
    table = load_transfer_matrix(path)
    assert table.majority == {"INF": 30.5}
    assert evaluate(table, {})["informativeness"]["INF"]["majority_score"] == 30.5


def test_a_target_not_learnt_is_skipped_as_its_relative_gain_is_noise(tmp_path: Path) -> None:
    # INF's baseline (51 over two seeds) is within 2 x its pooled seed sd of a 50.5 majority class: not learnt
    path = write_matrix(tmp_path / "m.csv", ROWS)
    path.with_suffix(".json").write_text('{"targets": {"INF": {"majority_score": 50.5}, "NOISE": {"majority_score": 0}}}')
    table = load_transfer_matrix(path)
    assert table.targets() == ["NOISE"] and table.skipped["INF"].startswith("not learnt")
    assert "within 2 x its seed sd" in table.skipped["INF"] and "chance (50.5)" in table.skipped["INF"]
    assert evaluate(table, {})["skipped_targets"]["INF"] == table.skipped["INF"]
    assert undefined_baselines(runs_of(ROWS)) == {}  # without chance scores only a zero baseline counts
    assert undefined_baselines(runs_of(ROWS), {"INF": 40.0, "NOISE": 0.0}) == {}  # 11 points above chance: learnt


# -- the source prior and the headline --------------------------------------------------------------------

def _three_targets() -> TransferTable:
    # relative gains (baseline 100): A: x +10, y 0, w +50; B: x +20, y -10; C: x -5, y +5
    def t(scores: dict[str, float]) -> dict[str, Transfer]:
        return {s: Transfer(v, 100.0, 1) for s, v in scores.items()}

    return TransferTable({"A": t({"x": 110, "y": 100, "w": 150}), "B": t({"x": 120, "y": 90}),
                          "C": t({"x": 95, "y": 105})})


def test_source_prior_leaves_the_target_out() -> None:
    prior = source_prior(_three_targets())
    # A: x over B, C = (20 - 5) / 2 = 7.5; y = (-10 + 5) / 2 = -2.5; w measured nowhere else -> last
    assert prior["A"]["mean_gain"] == pytest.approx({"x": 7.5, "y": -2.5, "w": None})
    assert prior["A"]["n_targets"] == {"x": 2, "y": 2, "w": 0}
    assert prior["A"]["ranking"] == ["x", "y", "w"]
    # C: x over A, B = 15, y = -5 -> x first, but y is C's best source: rho 2
    assert prior["C"]["ranking"] == ["x", "y"]
    result = evaluate(_three_targets(), {})
    assert result["methods"]["source_prior"]["per_target"]["C"]["rho"] == 2.0
    assert result["methods"]["source_prior"]["per_target"]["B"]["rho"] == 1.0
    assert result["source_prior"]["A"]["ranking"] == ["x", "y", "w"]


def test_headline_keeps_informative_targets_when_the_table_has_seeds(tmp_path: Path) -> None:
    table = load_transfer_matrix(write_matrix(tmp_path / "m.csv", ROWS))
    rankings = {"m": {"INF": ["y", "x"], "NOISE": ["x", "z"]}}
    auto = evaluate(table, rankings)
    assert auto["headline"] == {"scope": "informative", "targets": ["INF"], "note": None}
    assert set(auto["methods"]["m"]["per_target"]) == {"INF"}
    assert set(auto["methods_all_targets"]["m"]["per_target"]) == {"INF", "NOISE"}
    assert auto["methods"]["m"]["rho"] == 2.0 and auto["methods_all_targets"]["m"]["rho"] == 1.5
    every = evaluate(table, rankings, headline="all")
    assert every["headline"]["scope"] == "all" and every["methods"] == every["methods_all_targets"]
    # no seeds: nothing to restrict by, every target counts (and the note says why)
    no_seeds = evaluate(_three_targets(), {}, headline="informative")
    assert no_seeds["headline"]["scope"] == "all" and "no seeds" in no_seeds["headline"]["note"]
    with pytest.raises(ValueError, match="headline"):
        evaluate(table, rankings, headline="some")


# -- clustering --------------------------------------------------------------------------------------

def test_cluster_order_groups_similar_profiles_deterministically() -> None:
    profiles = {"a": [10.0, 10.0], "b": [9.0, 11.0], "c": [-10.0, -9.0], "d": [-11.0, -10.0]}
    names = ["c", "a", "d", "b"]
    order = cluster_order([profiles[n] for n in names])
    # {a, b} and {c, d} merge first; the higher-gain cluster leads; within a pair the higher mean (or
    # the lower input index) first: a (10) = b (10) -> a (index 1 < 3); c (-9.5) before d (-10.5)
    assert [names[i] for i in order] == ["a", "b", "c", "d"]
    assert cluster_order([profiles[n] for n in names]) == order
    # a missing value (NaN) only narrows the comparison: e stays with its own kind
    with_gap = [[10.0, math.nan], [-10.0, -9.0], [9.0, 11.0], [-11.0, math.nan]]
    assert cluster_order(with_gap) in ([0, 2, 1, 3], [2, 0, 1, 3])
    assert cluster_order([]) == [] and cluster_order([[1.0]]) == [0]


def _grid_rows() -> list[tuple]:
    """6 sources x 4 targets, 2 seeds: sources p, q help targets T1, T2 (+20%), r, s help T3, T4."""
    rows = []
    for target, base in (("T1", 50.0), ("T2", 60.0), ("T3", 40.0), ("T4", 70.0)):
        for source in ("p", "q", "r", "s", "u", "v"):
            good = (source in "pq" and target in ("T1", "T2")) or (source in "rs" and target in ("T3", "T4"))
            for seed, jitter in ((13, -0.5), (14, 0.5)):
                score = base * (1.2 if good else 0.97) + jitter
                rows.append((source, target, seed, score, base + jitter / 10, "accuracy"))
    return rows


def test_view_order_is_clustered_and_independent_of_row_order(tmp_path: Path) -> None:
    rows = _grid_rows()
    view = build_view(runs_of_dicts(rows))
    shuffled = rows[:]
    random.Random(7).shuffle(shuffled)
    again = build_view(runs_of_dicts(shuffled))
    assert [s["name"] for s in view["sources"]] == [s["name"] for s in again["sources"]]
    assert [t["name"] for t in view["targets"]] == [t["name"] for t in again["targets"]]
    sources = [s["name"] for s in view["sources"]]
    targets = [t["name"] for t in view["targets"]]
    # similar rows and columns end up next to each other
    assert abs(sources.index("p") - sources.index("q")) == 1 and abs(sources.index("r") - sources.index("s")) == 1
    assert abs(sources.index("u") - sources.index("v")) == 1
    assert abs(targets.index("T1") - targets.index("T2")) == 1 and abs(targets.index("T3") - targets.index("T4")) == 1
    cell = select_cells(view, "p", "T1")[0]
    assert cell["n_runs"] == 2 and cell["origins"] == ["matrix"]
    assert cell["mean_gain"] == pytest.approx(20.0, abs=0.5) and cell["seed_sd"] is not None
    assert [r["seed"] for r in cell["runs"]] == [13, 14] and {r["origin"] for r in cell["runs"]} == {"matrix"}
    assert all(t["informative"] is True for t in view["targets"])


def runs_of_dicts(rows: list[tuple]) -> list[dict]:
    return [{"source": s, "target": t, "seed": seed, "score": score, "baseline_score": base, "metric": m,
             "origin": "matrix"} for s, t, seed, score, base, m in rows]


def test_view_marks_uninformative_targets() -> None:
    view = build_view(runs_of_dicts(ROWS), {"targets": {"INF": {"majority_score": 40.0}}})
    flags = {t["name"]: t["informative"] for t in view["targets"]}
    assert flags == {"INF": True, "NOISE": False}
    assert next(t for t in view["targets"] if t["name"] == "INF")["majority_score"] == 40.0


def test_coverage_names_what_a_resumed_run_has_left() -> None:
    runs = runs_of_dicts(ROWS)
    coverage = matrix_coverage(runs, ["x", "y", "z", "INF"], ["INF", "LATER"])
    assert coverage["INF"] == {"sources": 2, "missing": ["z"], "seeds": [13, 14], "short": []}  # not its own source
    assert coverage["NOISE"] == {"sources": 2, "missing": ["INF", "y"], "seeds": [13, 14], "short": []}
    assert coverage["LATER"] == {"sources": 0, "missing": ["INF", "x", "y", "z"], "seeds": [], "short": []}
    stopped = matrix_coverage([r for r in runs if not (r["source"] == "y" and r["seed"] == 14)], ["x", "y"])
    assert stopped["INF"]["short"] == ["y"] and stopped["INF"]["missing"] == []  # a run stopped between seeds


def test_cost_sums_timed_runs_trained_sources_and_working_sessions() -> None:
    runs = [{**r, "seconds": s} for r, s in zip(runs_of_dicts(ROWS[:3]), (60.0, 100.0, 80.0), strict=True)]
    runs.append({**runs_of_dicts(ROWS[3:4])[0], "seconds": None})  # an older row without timing
    sidecar = {"sources": {"x": {"seconds": 300.0}, "y": {"seconds": 30.0}, "z": {}},
               "sessions": [{"device": "cpu", "units": 3, "wall_s": 200.0, "source_s": 330.0, "target_s": 240.0},
                            {"device": "cpu", "units": 0, "wall_s": 5.0},  # started and stopped: not a sitting's work
                            {"device": "cuda:0 (H100)", "units": 1, "wall_s": 50.0, "target_s": 20.0}]}
    cost = matrix_cost(runs, sidecar)
    assert cost["target_runs"] == {"runs": 4, "timed": 3, "total_s": 240.0, "median_s": 80.0, "min_s": 60.0,
                                   "max_s": 100.0}
    assert cost["sources"] == {"trained": 2, "total_s": 330.0, "min_s": 30.0, "max_s": 300.0, "slowest": "x"}
    assert cost["totals"] == {"sittings": 2, "wall_s": 250.0, "source_s": 330.0, "target_s": 260.0,
                              "devices": ["cpu", "cuda:0 (H100)"]}
    assert build_view(runs, sidecar)["matrix"]["cost"] == cost


# -- a user's transfer jobs ---------------------------------------------------------------------------

def _job(state: str, result: dict | None) -> SimpleNamespace:
    return SimpleNamespace(state=SimpleNamespace(value=state), result=result)


def _batch(batch_id: str, method: str = "intermediate") -> SimpleNamespace:
    return SimpleNamespace(id=batch_id, method=method, created_at=None,
                           sources=[{"key": "x", "name": "x"}, {"key": "ds1", "name": "my_source"},
                                    {"key": "y", "name": "y"}],
                           job_ids={"baseline": "b", "sources": {"x": "jx", "ds1": "jd", "y": "jy"}})


def _user_batches(target: str = "reviews") -> list[UserBatch]:
    jobs = {
        "b": _job("succeeded", {"role": "baseline", "runs": [{"seed": 13, "score": 70.0}, {"seed": 14, "score": 72.0}]}),
        "jx": _job("succeeded", {"role": "source", "main_metric": "accuracy", "source_rows": 900, "train_rows": 400,
                                 "runs": [{"seed": 13, "score": 77.0, "steps": 50}, {"seed": 14, "score": 79.0},
                                          {"seed": 15, "score": 99.0}]}),  # seed 15 has no baseline: left out
        "jd": _job("succeeded", {"role": "source", "main_metric": "accuracy",
                                 "runs": [{"seed": 13, "score": 69.0}, {"seed": 14, "score": 70.0}]}),
        "jy": _job("failed", None),
    }
    multi = UserBatch(_batch("m1", method="scalearn"), jobs, target)
    return [UserBatch(_batch("b1"), jobs, target), multi]


def test_user_runs_pair_each_seed_with_its_baseline() -> None:
    runs = user_runs(_user_batches())
    assert [(r["source"], r["seed"], r["score"], r["baseline_score"]) for r in runs] == [
        ("x", 13, 77.0, 70.0), ("x", 14, 79.0, 72.0), ("my_source", 13, 69.0, 70.0), ("my_source", 14, 70.0, 72.0)]
    assert {r["origin"] for r in runs} == {"user"} and {r["batch_id"] for r in runs} == {"b1"}
    assert runs[0]["job_id"] == "jx" and runs[0]["steps"] == 50 and runs[0]["target_rows"] == 400
    not_done = _user_batches()[0]
    not_done = UserBatch(not_done.batch, {**not_done.jobs, "b": _job("running", None)}, "reviews")
    assert user_runs([not_done]) == []  # no finished baseline: no gains


def test_user_runs_are_merged_and_marked_as_theirs() -> None:
    view = build_view(runs_of_dicts(_grid_rows()), user=user_runs(_user_batches()))
    targets = {t["name"]: t for t in view["targets"]}
    assert targets["reviews"]["origin"] == "user" and targets["T1"]["origin"] == "matrix"
    assert [t["name"] for t in view["targets"]][-1] == "reviews"  # yours after the shipped columns
    cell = select_cells(view, "x", "reviews")[0]
    assert cell["origins"] == ["user"] and cell["n_runs"] == 2
    assert cell["mean_gain"] == pytest.approx((78.0 - 71.0) / 71.0 * 100)
    assert {r["origin"] for r in cell["runs"]} == {"user"} and cell["runs"][0]["job_id"] == "jx"
    assert {r["origin"] for c in select_cells(view, target="T1") for r in c["runs"]} == {"matrix"}
    rows = {s["name"]: s for s in view["sources"]}
    assert rows["my_source"]["origins"] == ["user"] and rows["p"]["origins"] == ["matrix"]
    assert view["user_runs"] == 4
    # a user target named like a shipped one gets its own column: the shipped cells stay one regime
    clash = build_view(runs_of_dicts(_grid_rows()), user=user_runs(_user_batches(target="T1")))
    names = [t["name"] for t in clash["targets"]]
    assert "T1" in names and "T1 (yours)" in names
    assert select_cells(clash, "p", "T1")[0]["origins"] == ["matrix"]
    assert select_cells(clash, "x", "T1 (yours)")[0]["origins"] == ["user"]


def test_half_written_rows_are_left_out_with_a_note(tmp_path: Path) -> None:
    path = write_matrix(tmp_path / "m.csv", ROWS)
    with path.open("a") as fh:
        fh.write("x,INF,15,6")  # the runner is appending this line right now
    runs, problems = read_matrix_runs(path)
    assert len(runs) == len(ROWS) and len(problems) == 1 and problems[0].startswith("line 10")
    view = load_view(path)
    assert view["matrix"]["problems"] == problems and view["matrix"]["runs"] == len(ROWS)
    assert load_view(tmp_path / "absent.csv")["matrix"]["present"] is False


def test_the_shipped_matrix_when_present() -> None:
    if not DEFAULT_MATRIX.is_file() or DEFAULT_MATRIX.stat().st_size < 100:
        pytest.skip(f"no shipped transfer matrix yet at {DEFAULT_MATRIX} (bench/transfer_matrix.py writes it)")
    with DEFAULT_MATRIX.open(newline="") as fh:
        lines = sum(1 for _ in csv.DictReader(fh))
    view = load_view()
    assert view["matrix"]["present"] and view["matrix"]["runs"] + len(view["matrix"]["problems"]) == lines
    assert view["matrix"]["model"], "the sidecar names the model"
    shown = {(c["source"], c["target"]) for c in view["cells"]}
    assert len(shown) == len(view["cells"]) and all(c["n_runs"] >= 1 for c in view["cells"])
    for target in view["targets"]:
        assert target["origin"] == "matrix" and target["informative"] in (True, False, None)
        assert target["best_source"] in {s["name"] for s in view["sources"]}
