"""The `taskrank` CLI: readable one-line errors, inspect and embed on real files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.cli import main
from embeddings.result import EmbeddingResult

REPO = Path(__file__).resolve().parents[2]


def test_inspect_describes_a_csv(capsys):
    assert main(["inspect", str(REPO / "examples" / "reviews.csv"), "--json"]) == 0
    description = json.loads(capsys.readouterr().out)
    assert description["task_type"] == "classification" and description["rows"] == 30
    assert description["labels"] == {"negative": 15, "positive": 15}


def test_inspect_a_folder_in_text(shared_data, capsys):
    assert main(["inspect", str(shared_data / "stsb"), "--split", "dev"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("stsb: regression, 1492 rows, text pairs")


def test_inspect_prints_rounded_percentiles(shared_data, capsys):
    assert main(["inspect", str(shared_data / "rte"), "--split", "dev"]) == 0
    out = capsys.readouterr().out
    assert "length words: p50 41.0, p90 98.8, p99 142.9, max 173" in out  # not p90 98.80000000000001


def test_bad_file_is_one_line_without_traceback(tmp_path: Path):
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\nfine,1\nalso fine,1.5\nbroken,abc\n")
    proc = subprocess.run([sys.executable, "-m", "app.cli", "inspect", str(bad), "--task-type", "regression"],
                          capture_output=True, text=True, cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: bad.csv, line 4")
    assert "'abc'" in lines[0] and "label" in lines[0]


def test_column_mapping_flag(tmp_path: Path, capsys):
    data = tmp_path / "reviews.tsv"
    data.write_text("review\tstars\ngreat\tgood\nawful\tbad\nfine\tgood\n")
    assert main(["inspect", str(data), "--columns", "text=review,label=stars", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["labels"] == {"bad": 1, "good": 2}
    assert main(["inspect", str(data), "--columns", "text"]) != 0


@pytest.mark.integration
def test_embed_saves_vectors_and_metadata(tmp_path: Path, capsys):
    out = tmp_path / "reviews_taskemb"
    code = main(["embed", str(REPO / "examples" / "reviews.csv"), "--method", "taskemb", "--train-steps", "5",
                 "--out", str(out), "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["method"] == "taskemb" and summary["examples"] == 30
    assert summary["components"]["layer_5.output"]["dim"] == 384
    saved = EmbeddingResult.load(summary["saved"])
    assert saved.model_name == "sentence-transformers/all-MiniLM-L6-v2"
    assert saved.options["train_steps"] == 5 and saved.dataset_hash == summary["dataset_hash"]
    assert len(saved.vectors) == 13


def test_transfer_command_reports_baseline_and_gain(shared_data, tiny_model_dir, tmp_path, monkeypatch, capsys):
    from library.settings import get_settings

    monkeypatch.setenv("TASKRANK_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    try:
        code = main(["transfer", str(shared_data / "rte"), "--sources", "mrpc", "--data-dir", str(shared_data),
                     "--model", str(tiny_model_dir), "--epochs", "0.2", "--source-epochs", "0.1", "--seeds", "2",
                     "--target-rows", "40", "--source-rows", "40", "--max-length", "48", "--batch-size", "8",
                     "--json"])
    finally:
        get_settings.cache_clear()
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["main_metric"] == "accuracy" and len(report["baseline_scores"]) == 2
    [outcome] = report["sources"]
    assert outcome["source"] == "mrpc" and len(outcome["scores"]) == 2
    assert abs(outcome["gain"] - (outcome["mean"] - report["baseline_mean"])) < 1e-9
    assert len(list((tmp_path / "data" / "checkpoints").glob("source-*.safetensors"))) == 1


def test_transfer_command_with_a_multi_source_method(shared_data, tiny_model_dir, tmp_path, monkeypatch, capsys):
    from library.settings import get_settings

    monkeypatch.setenv("TASKRANK_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    try:
        code = main(["transfer", str(shared_data / "rte"), "--sources", "mrpc,stsb", "--data-dir", str(shared_data),
                     "--model", str(tiny_model_dir), "--transfer-method", "adapterfusion", "--epochs", "0.2",
                     "--source-epochs", "0.2", "--seeds", "1", "--target-rows", "40", "--source-rows", "40",
                     "--max-length", "48", "--batch-size", "8", "--json"])
    finally:
        get_settings.cache_clear()
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["method"] == "adapterfusion" and report["sources"] == ["mrpc", "stsb"]
    assert report["weight_kind"] == "attention" and abs(sum(report["source_weights"].values()) - 1) < 1e-5
    assert report["method_parameters"] == 2 * (3 * 32 * 32 + 2 * 32)  # query, key, value per layer (H = 32)
    assert len(list((tmp_path / "data" / "checkpoints").glob("adapter-*.safetensors"))) == 3


def test_transfer_holds_out_a_dev_split_and_maps_columns_of_every_file(shared_data, tiny_model_dir, tmp_path,
                                                                        monkeypatch, capsys):
    """Without --dev a target file holds out 20% as the API does; --columns applies to the dev file too."""
    from library.settings import get_settings

    words = ["great", "awful", "superb", "dull", "moving", "tedious", "charming", "dreary", "lovely", "bland"]
    rows = "".join(f"the film was {w} {i},{'pos' if j % 2 == 0 else 'neg'}\n"
                   for i in range(5) for j, w in enumerate(words))
    target = tmp_path / "reviews.csv"
    target.write_text("review,stars\n" + rows)
    dev = tmp_path / "reviews_dev.csv"
    dev.write_text("review,stars\n" + rows[: rows.index("\n", 200) + 1])
    monkeypatch.setenv("TASKRANK_DATA_DIR", str(tmp_path / "data"))
    common = ["--columns", "text=review,label=stars", "--sources", "mrpc", "--data-dir", str(shared_data),
              "--model", str(tiny_model_dir), "--epochs", "0.2", "--source-epochs", "0.1", "--seeds", "1",
              "--target-rows", "40", "--source-rows", "40", "--max-length", "32", "--batch-size", "8"]
    get_settings.cache_clear()
    try:
        held_out = main(["transfer", str(target), *common])
        held_out_out, held_out_err = capsys.readouterr()
        with_dev = main(["transfer", str(target), "--dev", str(dev), *common, "--json"])
        with_dev_out = capsys.readouterr().out
    finally:
        get_settings.cache_clear()
    assert held_out == 0 and "dev: 10 of 50 rows held out (20%; no --dev given)" in held_out_err
    assert held_out_out.startswith("reviews: accuracy on dev, 1 seed\n")  # not "1 seeds"
    assert with_dev == 0 and json.loads(with_dev_out)["main_metric"] == "accuracy"


def test_transfer_on_a_target_too_small_to_hold_out_says_so(tmp_path, capsys):
    target = tmp_path / "two.csv"
    target.write_text("text,label\ngood film,pos\nbad film,neg\n")
    assert main(["transfer", str(target), "--sources", "mrpc"]) == 1
    assert "the target has 2 rows: too few to hold out a dev split (give --dev DEV_FILE)" in capsys.readouterr().err
