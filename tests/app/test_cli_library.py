"""`taskrank rank | library ... | evaluate` through app.cli.main, on a data dir in tmp_path."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from app.cli import main
from library.bundle import MANIFEST, default_library_path
from library.methods import DEFAULT_METHOD
from library.settings import get_settings

SHARED_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"

TRANSFER_CSV = """source,target,score,baseline_score
mnli,rte,72.0,60.0
snli,rte,70.0,60.0
qnli,rte,66.0,60.0
sst2,rte,61.0,60.0
conll2003_ner,rte,58.0,60.0
cola,rte,59.0,60.0
qqp,mrpc,85.0,80.0
mnli,mrpc,83.0,80.0
sst2,mrpc,80.5,80.0
ptb_pos,mrpc,78.0,80.0
"""


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """TASKRANK_DATA_DIR in tmp_path, CPU, offline; settings re-read."""
    data = tmp_path / "var"
    monkeypatch.setenv("TASKRANK_DATA_DIR", str(data))
    monkeypatch.setenv("TASKRANK_DEVICE", "cpu")
    monkeypatch.delenv("TASKRANK_DATABASE_URL", raising=False)
    monkeypatch.delenv("TASKRANK_MODEL", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    get_settings.cache_clear()
    yield data
    get_settings.cache_clear()


@pytest.fixture
def default_library() -> Path:
    path = default_library_path()
    if not (path / MANIFEST).is_file():
        pytest.skip(f"no default library shipped at {path}")
    return path


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared task data not found at {SHARED_DATA.resolve()} (expected ../shared/data)")
    return SHARED_DATA


@pytest.fixture
def target_file(tmp_path: Path, shared_data: Path) -> Path:
    """The first 40 rows of RTE as a plain .jsonl upload."""
    with (shared_data / "rte" / "train.jsonl").open(encoding="utf-8") as fh:
        lines = [next(fh) for _ in range(40)]
    path = tmp_path / "my_rte.jsonl"
    path.write_text("".join(lines), encoding="utf-8")
    return path


def run(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(err: str) -> None:
    assert "Traceback" not in err
    # the one-time notice of a first use ("imported the default library ...") is not part of the error
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("imported the default")]
    assert len(lines) == 1 and lines[0].startswith("error: "), err


def test_library_list_imports_the_default_library_on_first_use(env, default_library, capsys) -> None:
    code, out, err = run(capsys, "library", "list")
    assert code == 0
    assert "imported the default library (30 source tasks)" in err
    assert "30 source tasks" in out and "sentence-transformers/all-MiniLM-L6-v2" in out
    for name in ("rte", "squad_v2", "conll2003_ner", "stsb"):
        assert f"\n{name} " in out
    code, out, err = run(capsys, "library", "list", "--json")
    assert code == 0 and err == ""  # second use: nothing imported again
    listing = json.loads(out)
    assert len(listing["tasks"]) == 30 and listing["options"]["max_rows"] == 1000
    assert {t["task_type"] for t in listing["tasks"]} >= {"classification", "question_answering"}


def test_evaluate_prints_metrics_per_method_and_baselines(env, default_library, tmp_path, capsys) -> None:
    table = tmp_path / "transfer.csv"
    table.write_text(TRANSFER_CSV)
    code, out, err = run(capsys, "evaluate", str(table))
    assert code == 0, err
    assert "2 target(s): mrpc, rte" in out
    assert "NDCG@5" in out and "rho" in out and "Regret@3" in out
    rows = {line.split()[0]: line.split()[1:] for line in out.split("\n\n")[0].splitlines()[3:]}  # first table
    # esm_logme ranks with the shipped ESMs; logme has no checkpoint here, but the shipped library records
    # the evidence computed for its matrix targets (rte, mrpc among them) where they were cached
    scored = {"esm_logme", "logme"} if SHARED_DATA.is_dir() else set()  # the targets' rows: ../shared/data
    # the shipped library carries the checkpoint-based TaskEmb of the sources trained for its matrix
    scored |= {"taskemb_ft"}
    assert set(rows) == {"textemb", "semb", "taskemb", "ensemble", "random", "datasize", "source_prior"} | scored
    assert "taskemb_ft: measured source(s)" in err and "ranked last" in err  # sources without one: named
    if SHARED_DATA.is_dir():  # conll2003_ner and ptb_pos: tagging sources, no evidence recorded for them
        assert "logme: measured source(s)" in err and "conll2003_ner" in err
    else:
        assert "method logme not scored" in err
    for values in rows.values():
        ndcg, rho, regret = map(float, values)
        assert 0 <= ndcg <= 1 and 1 <= rho <= 6 and regret >= 0
    code, out, _ = run(capsys, "evaluate", str(table), "--json")
    result = json.loads(out)
    assert result["targets"] == ["mrpc", "rte"] and result["missing_sources"] == {}
    # DataSize: qqp (10,000 rows) is the largest mrpc source and the best one: rho 1 for mrpc.
    assert result["methods"]["datasize"]["per_target"]["mrpc"]["rho"] == 1.0
    code, out, _ = run(capsys, "evaluate", str(table), "--json", "--targets", "rte")
    only_rte = json.loads(out)
    assert code == 0 and only_rte["targets"] == ["rte"]
    assert only_rte["methods"]["taskemb"]["per_target"]["rte"] == result["methods"]["taskemb"]["per_target"]["rte"]


def test_evaluate_errors_are_one_line(env, default_library, tmp_path, capsys) -> None:
    code, _, err = run(capsys, "evaluate", str(tmp_path / "missing.csv"))
    assert code == 1
    assert_one_line_error(err)
    table = tmp_path / "transfer.csv"
    table.write_text("source,target,score,baseline_score\nmnli,my_task,70,60\n")
    code, _, err = run(capsys, "evaluate", str(table))
    assert code == 1 and "my_task" in err and "not library tasks" in err
    assert_one_line_error(err)
    table.write_text("source,target,score\nmnli,rte,70\n")
    code, _, err = run(capsys, "evaluate", str(table))
    assert code == 1 and "baseline_score" in err
    assert_one_line_error(err)


def test_rank_with_a_bad_path_is_a_one_line_error(env, tmp_path, capsys) -> None:
    code, out, err = run(capsys, "rank", str(tmp_path / "nope.jsonl"))
    assert code == 2 and out == ""
    assert_one_line_error(err)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a", "label": "x"}\n{"text": 3, "label": "y"}\n')
    code, _, err = run(capsys, "rank", str(bad))
    assert code == 2 and "line 2" in err
    assert_one_line_error(err)


def test_library_errors_are_one_line(env, default_library, tmp_path, capsys) -> None:
    code, _, err = run(capsys, "library", "remove", "no_such_task")
    assert code == 1 and "no_such_task" in err
    assert_one_line_error(err)
    code, _, err = run(capsys, "library", "import", str(tmp_path / "nowhere"))
    assert code == 1 and "not a library bundle" in err
    assert_one_line_error(err)
    code, _, err = run(capsys, "library", "build", str(tmp_path / "no_data"))
    assert code == 1 and "no such data directory" in err
    assert_one_line_error(err)


def test_library_remove_export_and_import(env, default_library, tmp_path, capsys, monkeypatch) -> None:
    code, out, _ = run(capsys, "library", "remove", "wnli")
    assert code == 0 and out.strip() == "removed wnli"
    bundle = tmp_path / "bundle"
    code, out, _ = run(capsys, "library", "export", str(bundle))
    assert code == 0 and "exported 29 tasks" in out
    monkeypatch.setenv("TASKRANK_DATA_DIR", str(tmp_path / "other"))
    get_settings.cache_clear()
    code, out, err = run(capsys, "library", "import", str(bundle))
    assert code == 0 and "imported 29 tasks" in out and "default library" not in err
    code, out, _ = run(capsys, "library", "list")
    assert "29 source tasks" in out and "\nwnli " not in out


@pytest.mark.integration
def test_rank_prints_a_table(env, default_library, target_file, capsys) -> None:
    code, out, err = run(capsys, "rank", str(target_file), "--method", "textemb", "--top", "5", "--all-class")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith(
        "my_rte (classification, 40 rows): top 5 by textemb over all task types; library r"
    )
    assert lines[1].split()[:5] == ["rank", "source", "task", "type", "similarity"]
    ranked = lines[3:]
    assert len(ranked) == 5 and [r.split()[0] for r in ranked] == ["1", "2", "3", "4", "5"]
    assert all("cos 0." in r for r in ranked)

    code, out, err = run(capsys, "rank", str(target_file), "--method", "taskemb", "--top", "3")
    assert code == 0, err
    assert "over classification sources" in out
    assert out.count("13 components: best") == 3

    code, out, err = run(capsys, "rank", str(target_file), "--top", "4", "--json")
    assert code == 0, err
    ranking = json.loads(out)
    # the default the shipped matrix chose; the shipped library has the maps it reads, so no fallback
    assert ranking["method"] == DEFAULT_METHOD and len(ranking["sources"]) == 4
    assert "cannot rank this target" not in err and not any("cannot rank" in n for n in ranking["notes"])
    assert {s["task_type"] for s in ranking["sources"]} == {"classification"}
    parts = {"textemb", "semb", "taskemb"} if DEFAULT_METHOD == "ensemble" else {DEFAULT_METHOD}
    assert set(ranking["sources"][0]["details"]) == parts


@pytest.mark.integration
def test_library_build_and_add_with_the_real_encoder(
    env, default_library, tmp_path, shared_data, capsys
) -> None:
    data = tmp_path / "data" / "tiny_rte"
    data.mkdir(parents=True)
    meta = json.loads((shared_data / "rte" / "task.json").read_text())
    (data / "task.json").write_text(json.dumps({**meta, "name": "tiny_rte", "num_train": 30}))
    with (shared_data / "rte" / "train.jsonl").open(encoding="utf-8") as fh:
        (data / "train.jsonl").write_text("".join(next(fh) for _ in range(30)))
    code, out, err = run(capsys, "library", "build", str(data.parent), "--only", "tiny_rte")
    assert code == 0, err
    assert "built 1 source tasks, 0 up to date" in out and "tiny_rte: embedded" in err
    code, out, err = run(capsys, "library", "build", str(data.parent))
    assert code == 0 and "built 0 source tasks, 1 up to date" in out
    shutil.copy(data / "train.jsonl", tmp_path / "upload.jsonl")
    code, _, err = run(capsys, "library", "add", str(tmp_path / "upload.jsonl"), "--name", "tiny_rte")
    assert code == 1 and "already exists" in err
    code, out, err = run(capsys, "library", "add", str(tmp_path / "upload.jsonl"), "--name", "copy", "--json")
    assert code == 0, err
    added = json.loads(out)
    assert added["rows_used"] == 30 and added["task_type"] == "classification"
    code, out, _ = run(capsys, "library", "list")
    assert "32 source tasks" in out


def test_a_removed_shipped_source_is_restored(env, default_library, capsys) -> None:
    code, out, _ = run(capsys, "library", "remove", "sst2")
    assert code == 0 and out.strip() == "removed sst2"
    code, out, _ = run(capsys, "library", "restore-default")
    assert code == 0 and out.startswith("restored 1 shipped source task: sst2; library ")
    code, out, _ = run(capsys, "library", "list")
    assert "30 source tasks" in out and "\nsst2 " in out
    code, out, _ = run(capsys, "library", "restore-default")
    assert code == 0 and out.strip() == "nothing to restore: the library has all 30 shipped source tasks"
