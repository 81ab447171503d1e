"""The transfer-matrix runner trains its bf16 regime in fp32 on a CPU without native bf16 (emulated bf16 is
14x slower there; fp32 measured interchangeable), records each row's precision, never appends under
another header; the bf16 probe agrees with the CPU's flags; the precision check's rule."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.transfer_matrix import TargetRegime, append_row, read_rows, run_precision
from embeddings.encoders import cpu_has_native_bf16


def test_a_cpu_without_native_bf16_trains_the_bf16_regime_in_fp32() -> None:
    assert run_precision(TargetRegime(), "cpu", native_bf16=False) == "fp32"


@pytest.mark.parametrize(("precision", "device", "native"), [("bf16", "cpu", True), ("bf16", "cuda", False),
                                                             ("fp32", "cpu", False), ("fp32", "cpu", True)])
def test_the_regimes_own_precision_where_it_is_native_or_not_bf16(precision: str, device: str, native: bool) -> None:
    assert run_precision(TargetRegime(precision=precision), device, native_bf16=native) == precision


def test_append_row_refuses_a_file_with_other_columns(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    append_row(path, ["a", "b", "precision"], {"a": 1, "b": 2, "precision": "fp32"})
    append_row(path, ["a", "b", "precision"], {"a": 3, "b": 4, "precision": "bf16"})
    assert read_rows(path) == [{"a": "1", "b": "2", "precision": "fp32"}, {"a": "3", "b": "4", "precision": "bf16"}]
    with pytest.raises(SystemExit, match="its columns are"):
        append_row(path, ["a", "b"], {"a": 5, "b": 6})
    assert len(read_rows(path)) == 2  # nothing written under the wrong header


def test_the_shipped_matrix_records_each_rows_precision() -> None:
    from bench.transfer_matrix import BASELINE_COLUMNS, COLUMNS, DEFAULT_OUT

    for path, columns in ((DEFAULT_OUT, COLUMNS), (DEFAULT_OUT.with_name(DEFAULT_OUT.stem + "_baselines.csv"),
                                                   BASELINE_COLUMNS)):
        rows = read_rows(path)
        assert rows and list(rows[0]) == columns and {r["precision"] for r in rows} <= {"bf16", "fp32"}


def test_native_bf16_probe_agrees_with_the_cpu_flags() -> None:
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        pytest.skip("no /proc/cpuinfo to compare the probe with")
    flags = cpuinfo.read_text().split()
    if "avx512_bf16" in flags or "amx_bf16" in flags:
        assert cpu_has_native_bf16() is True
    elif "avx512bw" not in flags:  # AVX2 at most, as on the machine where the 14x was measured
        assert cpu_has_native_bf16() is False
    else:
        pytest.skip("AVX-512 without BF16: oneDNN's own choice, nothing in the flags to compare it with")


def test_precision_check_pairs_on_target_and_seed_and_applies_the_margin() -> None:
    from bench.precision_check import compare

    bf16 = [{"target": "a", "seed": "13", "score": "70"}, {"target": "a", "seed": "14", "score": "72"},
            {"target": "b", "seed": "13", "score": "50"}, {"target": "b", "seed": "14", "score": "50"}]
    # z: a13 +0.1, a14 -0.1, b13 +0.1, b14 0.0 (seed sd 2 and 1); c has no bf16 row, so it is left out
    fp32 = [{"target": "a", "seed": "13", "score": "70.2"}, {"target": "a", "seed": "14", "score": "71.8"},
            {"target": "b", "seed": "13", "score": "50.1"}, {"target": "b", "seed": "14", "score": "50"},
            {"target": "c", "seed": "13", "score": "10"}]
    close = compare(fp32, bf16, {"a": 2.0, "b": 1.0, "c": 1.0})
    assert close["n"] == 4 and close["mean_z"] == pytest.approx(0.025) and close["interchangeable"] is True
    # every fp32 baseline 1.5 seed sd higher: a systematic shift, outside the margin
    shifted = [dict(r, score=str(float(r["score"]) + 1.5 * {"a": 2.0, "b": 1.0}[r["target"]])) for r in bf16]
    far = compare(shifted, bf16, {"a": 2.0, "b": 1.0})
    assert far["mean_z"] == pytest.approx(1.5) and far["interchangeable"] is False


def test_a_retrained_source_that_came_out_otherwise_keeps_the_earlier_record() -> None:
    from bench.transfer_matrix import keep_source_record

    bf16 = {"source": "wic", "dev_score": 52.3, "best_step": 27, "precision": "bf16", "seconds": 25.5}
    sidecar: dict = {"sources": {"wic": bf16}}
    keep_source_record(sidecar, dict(bf16, seconds=30.1))  # the same training, only slower: no history
    assert sidecar["sources"]["wic"]["seconds"] == 30.1 and "source_history" not in sidecar
    fp32 = {"source": "wic", "dev_score": 52.3, "best_step": 18, "precision": "fp32", "seconds": 47.5}
    keep_source_record(sidecar, fp32)
    assert sidecar["sources"]["wic"] == fp32
    assert sidecar["source_history"]["wic"] == [dict(bf16, seconds=30.1)]
