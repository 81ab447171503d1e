"""embeddings.data: every input format, the real shared/data tasks, and one test per kind of bad input."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

from embeddings.data import (
    Dataset,
    DatasetError,
    LoadLimits,
    QAExample,
    TaggingExample,
    TaskType,
    TextExample,
    dataset_from_rows,
    load_dataset,
)

SHARED_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


@pytest.fixture(scope="module")
def shared_data() -> Path:
    if not (SHARED_DATA / "README.md").is_file():
        pytest.skip(f"shared task data not found at {SHARED_DATA.resolve()} (expected ../shared/data)")
    return SHARED_DATA


def write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


def jsonl(path: Path, rows: list) -> Path:
    return write(path, "".join(json.dumps(r) + "\n" for r in rows))


def error_of(path_or_rows, **kwargs) -> DatasetError:
    with pytest.raises(DatasetError) as info:
        if isinstance(path_or_rows, list):
            dataset_from_rows(path_or_rows, **kwargs)
        else:
            load_dataset(path_or_rows, **kwargs)
    return info.value


CONTEXT = "The Rhine begins in the Swiss Alps and ends in the North Sea."


def squad_row(qid="q1", text="North Sea", start=None, **extra) -> dict:
    start = CONTEXT.index(text) if start is None else start
    return {"id": qid, "question": "Where does it end?", "context": CONTEXT,
            "answers": {"text": [text], "answer_start": [start]}, **extra}


# ---------------------------------------------------------------------------------------------- real data

def test_rte_is_pair_classification_with_task_json_labels(shared_data):
    meta = json.loads((shared_data / "rte" / "task.json").read_text())
    ds = load_dataset(shared_data / "rte")
    assert ds.name == "rte" and ds.task_type is TaskType.CLASSIFICATION
    assert len(ds) == meta["num_train"] and ds.labels == meta["labels"] and len(ds.labels) == 2
    assert ds.is_pair and all(isinstance(ex.label, str) for ex in ds.examples)
    info = ds.describe()
    assert info["rows"] == len(ds) and sum(info["labels"].values()) == len(ds) and info["pair"] is True
    assert info["length_chars"]["max"] >= info["length_chars"]["p99"] >= info["length_chars"]["p50"] > 0


def test_stsb_is_regression_with_float_labels(shared_data):
    ds = load_dataset(shared_data / "stsb", split="dev")
    assert ds.task_type is TaskType.REGRESSION and ds.labels == [] and ds.is_pair
    assert all(isinstance(ex.label, float) and 0.0 <= ex.label <= 5.0 for ex in ds.examples)
    assert ds.describe()["label_stats"]["max"] <= 5.0


def test_conll2003_tags_are_a_subset_of_task_json_labels(shared_data):
    meta = json.loads((shared_data / "conll2003_ner" / "task.json").read_text())
    ds = load_dataset(shared_data / "conll2003_ner", split="test")
    assert ds.task_type is TaskType.SEQUENCE_LABELING and len(ds) == meta["num_test"]
    assert ds.labels == meta["labels"]
    assert {t for ex in ds.examples for t in ex.tags} <= set(meta["labels"])
    assert all(len(ex.tokens) == len(ex.tags) for ex in ds.examples)


def test_squad_v2_has_unanswerable_questions(shared_data):
    ds = load_dataset(shared_data / "squad_v2", split="dev")
    assert ds.task_type is TaskType.QUESTION_ANSWERING and ds.labels == []
    unanswerable = ds.describe()["unanswerable"]
    assert 0 < unanswerable < len(ds)
    ex = next(ex for ex in ds.examples if ex.answer_texts)
    start = ex.answer_starts[0]
    assert ex.context[start:start + len(ex.answer_texts[0])] == ex.answer_texts[0]


def test_a_split_file_alone_infers_the_same_dataset_as_its_task_folder(shared_data):
    folder = load_dataset(shared_data / "wnli")
    alone = load_dataset(shared_data / "wnli" / "train.jsonl")
    assert alone.task_type is TaskType.CLASSIFICATION and alone.name == "train"
    assert alone.content_hash == folder.content_hash


# ---------------------------------------------------------------------------------------------- formats

def test_csv_with_glue_names_and_quoted_commas_and_newlines(tmp_path):
    path = write(tmp_path / "mrpc.csv", 'sentence1,sentence2,label\n'
                                        '"Hello, world","Hi,\nthere",1\n'
                                        'A cat.,A dog.,0\n')
    ds = load_dataset(path)
    assert ds.task_type is TaskType.CLASSIFICATION and ds.name == "mrpc" and ds.labels == ["0", "1"]
    assert ds.examples == [TextExample("Hello, world", "Hi,\nthere", "1"), TextExample("A cat.", "A dog.", "0")]


def test_tsv_single_sentences_are_read_without_quoting(tmp_path):
    path = write(tmp_path / "sst.tsv", 'sentence\tlabel\n"quoted" start , fine\t1\nbad film\t0\n')
    ds = load_dataset(path)
    assert not ds.is_pair
    assert ds.examples == [TextExample('"quoted" start , fine', None, "1"), TextExample("bad film", None, "0")]


def test_csv_question_and_sentence_are_text_and_pair_like_qnli(tmp_path):
    path = write(tmp_path / "qnli.csv", "idx,question,sentence,label\n0,Who?,Bob did.,entailment\n"
                                        "1,When?,Never.,not_entailment\n")
    ds = load_dataset(path)
    assert ds.examples[0] == TextExample("Who?", "Bob did.", "entailment")


def test_csv_premise_hypothesis_and_gold_label(tmp_path):
    path = write(tmp_path / "nli.csv", "Premise,Hypothesis,gold_label\nA man sleeps.,He is awake.,contradiction\n"
                                       "A man sleeps.,He rests.,entailment\n")
    assert load_dataset(path).examples[1] == TextExample("A man sleeps.", "He rests.", "entailment")


def test_csv_column_map_overrides_detection(tmp_path):
    path = write(tmp_path / "reviews.csv", "text,review,stars\nignored,Great!,5\nignored,Awful.,1\n")
    ds = load_dataset(path, column_map={"text": "review", "label": "stars"})
    assert ds.examples == [TextExample("Great!", None, "5"), TextExample("Awful.", None, "1")]


def test_csv_float_scores_are_inferred_as_regression(tmp_path):
    path = write(tmp_path / "sts.csv", "sentence1,sentence2,score\na,b,4.5\nc,d,1\n")
    ds = load_dataset(path)
    assert ds.task_type is TaskType.REGRESSION and [ex.label for ex in ds.examples] == [4.5, 1.0]


def test_integer_labels_are_classification_and_render_without_decimals(tmp_path):
    ds = load_dataset(jsonl(tmp_path / "a.jsonl", [{"text": "x", "label": 1}, {"text": "y", "label": 2.0},
                                                     {"text": "z", "label": True}]))
    assert ds.task_type is TaskType.CLASSIFICATION and ds.labels == ["1", "2", "true"]


def test_explicit_task_type_wins_over_inference(tmp_path):
    rows = [{"text": "x", "label": 1}, {"text": "y", "label": 2}]
    assert dataset_from_rows(rows, task_type="regression").examples[0].label == 1.0
    floats = [{"text": "x", "label": 0.5}, {"text": "y", "label": 1.5}]
    assert dataset_from_rows(floats, task_type=TaskType.CLASSIFICATION).labels == ["0.5", "1.5"]


@pytest.mark.parametrize("sep", ["\t", " ", "  "])
def test_conll_two_columns_with_tabs_or_spaces(tmp_path, sep):
    path = write(tmp_path / "ner.conll", f"EU{sep}B-ORG\nrejects{sep}O\n\n\nPeter{sep}B-PER\nBlackburn{sep}I-PER\n")
    ds = load_dataset(path)
    assert ds.task_type is TaskType.SEQUENCE_LABELING and ds.labels == ["B-ORG", "B-PER", "I-PER", "O"]
    assert ds.examples == [TaggingExample(["EU", "rejects"], ["B-ORG", "O"]),
                           TaggingExample(["Peter", "Blackburn"], ["B-PER", "I-PER"])]


def test_conll2003_four_columns_take_the_last_as_tag_and_skip_docstart(tmp_path):
    path = write(tmp_path / "eng.train.txt", "-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n"
                                             "-DOCSTART- -X- -X- O\nLamb NN B-NP O\n")
    ds = load_dataset(path)
    assert ds.examples == [TaggingExample(["EU", "rejects"], ["B-ORG", "O"]), TaggingExample(["Lamb"], ["O"])]


def test_tsv_without_a_known_header_is_conll(tmp_path):
    path = write(tmp_path / "pos.tsv", "New York\tPROPN\nis\tAUX\n")
    assert load_dataset(path).examples == [TaggingExample(["New York", "is"], ["PROPN", "AUX"])]


def test_squad_v1_nested_json(tmp_path):
    data = {"version": "1.1", "data": [{"title": "Rhine", "paragraphs": [{"context": CONTEXT, "qas": [
        {"id": "a", "question": "Where does it begin?",
         "answers": [{"text": "Swiss Alps", "answer_start": 24}, {"text": "the Swiss Alps", "answer_start": 20}]},
        {"id": "b", "question": "Where does it end?", "answers": [{"text": "North Sea", "answer_start": 51}]}]}]}]}
    ds = load_dataset(write(tmp_path / "dev-v1.1.json", json.dumps(data, indent=2)))
    assert ds.task_type is TaskType.QUESTION_ANSWERING
    assert ds.examples[0] == QAExample("a", "Where does it begin?", CONTEXT, ["Swiss Alps", "the Swiss Alps"],
                                       [24, 20])
    assert ds.examples[1].answer_starts == [51] and ds.describe()["unanswerable"] == 0


def test_squad_v2_is_impossible_questions_have_no_answers(tmp_path):
    data = {"version": "v2.0", "data": [{"title": "Rhine", "paragraphs": [{"context": CONTEXT, "qas": [
        {"id": "a", "question": "Who painted it?", "answers": [], "is_impossible": True,
         "plausible_answers": [{"text": "Rhine", "answer_start": 4}]},
        {"id": "b", "question": "Where does it end?", "answers": [{"text": "North Sea", "answer_start": 51}],
         "is_impossible": False}]}]}]}
    ds = load_dataset(write(tmp_path / "train-v2.0.json", json.dumps(data)))
    assert ds.examples[0] == QAExample("a", "Who painted it?", CONTEXT, [], [])
    assert ds.describe()["unanswerable"] == 1
    assert next(ds.to_rows())["answers"] == {"text": [], "answer_start": []}


def test_json_list_of_rows_and_json_lines_named_json(tmp_path):
    rows = [{"text": "good", "label": "pos"}, {"text": "bad", "label": "neg"}]
    listed = load_dataset(write(tmp_path / "rows.json", json.dumps(rows, indent=2)))
    lines = load_dataset(jsonl(tmp_path / "lines.json", rows))
    assert listed.examples == lines.examples == [TextExample("good", None, "pos"), TextExample("bad", None, "neg")]


def test_jsonl_qa_rows_and_hf_style_answer_lists(tmp_path):
    ds = load_dataset(jsonl(tmp_path / "qa.jsonl", [squad_row(), squad_row("q2", "Swiss Alps")]))
    assert ds.task_type is TaskType.QUESTION_ANSWERING and ds.examples[1].answer_starts == [CONTEXT.index("Swiss")]
    listed = dataset_from_rows([{**squad_row(), "answers": [{"text": "North Sea", "answer_start": 51}]}])
    assert listed.examples[0].answer_texts == ["North Sea"]


def test_unknown_extension_is_sniffed(tmp_path):
    ds = load_dataset(jsonl(tmp_path / "data.out", [{"text": "a", "label": "x"}, {"text": "b", "label": "y"}]))
    assert ds.labels == ["x", "y"]
    assert load_dataset(write(tmp_path / "data.dat", "text,label\na,x\nb,y\n")).labels == ["x", "y"]


def test_task_folder_reads_the_split_and_task_json(tmp_path):
    write(tmp_path / "task.json", json.dumps({"name": "toy", "task_type": "classification", "labels": ["b", "a"]}))
    jsonl(tmp_path / "dev.jsonl", [{"text": "x", "label": "a"}, {"text": "y", "label": "b"}])
    ds = load_dataset(tmp_path, split="dev")
    assert ds.name == "toy" and ds.labels == ["b", "a"] and ds.describe()["labels"] == {"b": 1, "a": 1}
    assert load_dataset(tmp_path, split="dev", name="other").name == "other"


def test_utf8_bom_is_ignored(tmp_path):
    ds = load_dataset(write(tmp_path / "bom.csv", b"\xef\xbb\xbftext,label\nx,a\ny,b\n"))
    assert ds.examples[0].text == "x"


# ---------------------------------------------------------------------------------------------- identity

def test_content_hash_ignores_the_format_but_not_the_labels(tmp_path):
    csv_ds = load_dataset(write(tmp_path / "d.csv", 'text,text_pair,label\n"a, b",c,1\nd,e,0\n'))
    rows = [{"text": "a, b", "text_pair": "c", "label": 1}, {"text": "d", "text_pair": "e", "label": "0"}]
    jsonl_ds = load_dataset(jsonl(tmp_path / "d.jsonl", rows))
    assert csv_ds.content_hash == jsonl_ds.content_hash == dataset_from_rows(list(csv_ds.to_rows())).content_hash
    rows[1]["label"] = "2"
    assert dataset_from_rows(rows).content_hash != csv_ds.content_hash
    assert len(csv_ds.content_hash) == 64 and csv_ds.describe()["content_hash"] == csv_ds.content_hash


def test_to_rows_round_trips_every_task_type():
    for ds in (dataset_from_rows([{"tokens": ["a", "b"], "tags": ["X", "Y"]}]), dataset_from_rows([squad_row()]),
               dataset_from_rows([{"text": "a", "text_pair": "b", "label": 0.5}, {"text": "c", "label": 1.5}])):
        again = dataset_from_rows(list(ds.to_rows()))
        assert again.examples == ds.examples and again.content_hash == ds.content_hash


def test_subsample_is_deterministic_and_keeps_order():
    ds = dataset_from_rows([{"text": f"t{i}", "label": str(i % 3)} for i in range(100)])
    a, b = ds.subsample(10), ds.subsample(10)
    assert isinstance(a, Dataset) and len(a) == 10 and a.examples == b.examples and a.labels == ds.labels
    indexes = [int(ex.text[1:]) for ex in a.examples]
    assert indexes == sorted(indexes)
    assert ds.subsample(10, seed=1).examples != a.examples
    assert ds.subsample(100) is ds


# ---------------------------------------------------------------------------------------------- bad input

def test_error_text_and_dict():
    err = DatasetError("regression label 'abc' is not a number", file="train.csv", line=12, field="label")
    assert str(err) == "train.csv, line 12, field 'label': regression label 'abc' is not a number"
    assert err.to_dict() == {"message": err.message, "file": "train.csv", "line": 12, "column": None,
                             "field": "label"}
    assert str(DatasetError("plain")) == "plain" and isinstance(err, ValueError)
    again = pickle.loads(pickle.dumps(err))
    assert (again.line, again.field, str(again)) == (12, "label", str(err))


@pytest.mark.parametrize("content", ["", "  \n\n\t\n"])
def test_empty_file(tmp_path, content):
    err = error_of(write(tmp_path / "e.jsonl", content))
    assert "file is empty" in err.message and err.file == "e.jsonl" and err.line is None


def test_header_only_csv_has_no_data_rows(tmp_path):
    err = error_of(write(tmp_path / "h.csv", "text,label\n\n"))
    assert "no data rows" in err.message and err.line is None


def test_bad_utf8_reports_line_and_byte_column(tmp_path):
    err = error_of(write(tmp_path / "bad.csv", b"text,label\nok,a\nab\xffc,b\n"))
    assert (err.line, err.column) == (3, 3) and "UTF-8" in err.message
    err = error_of(write(tmp_path / "bad.json", b'[\n {"text": "\xc3("}]'))
    assert (err.line, err.column) == (2, 12)


def test_invalid_json_line_reports_line_and_column(tmp_path):
    err = error_of(write(tmp_path / "x.jsonl", '{"text": "a", "label": "b"}\n\n{"text": "a" "label": 1}\n'))
    assert (err.line, err.column) == (3, 14) and "invalid JSON" in err.message


def test_invalid_json_in_a_json_list_reports_its_line(tmp_path):
    err = error_of(write(tmp_path / "x.json", '[\n {"text": "a", "label": "x"},\n {"text": "b", "label": }\n]'))
    assert (err.line, err.column) == (3, 25)


def test_jsonl_line_that_is_not_an_object(tmp_path):
    err = error_of(write(tmp_path / "x.jsonl", '{"text": "a", "label": "b"}\n["a", "b"]\n'))
    assert err.line == 2 and "JSON object" in err.message


def test_json_list_row_that_is_not_an_object_has_its_line(tmp_path):
    err = error_of(write(tmp_path / "x.json", '[\n  {"text": "a", "label": "b"},\n\n  42\n]'))
    assert err.line == 4 and "JSON object" in err.message


def test_missing_text_or_label_field(tmp_path):
    err = error_of([{"text": "a", "label": "x"}, {"label": "y"}])
    assert (err.line, err.field, err.file) == (2, "text", None) and "missing field 'text'" in err.message
    err = error_of(jsonl(tmp_path / "m.jsonl", [{"text": "a", "label": "x"}, {"text": "b"}]))
    assert (err.line, err.field) == (2, "label")


def test_missing_csv_column_names_the_field_and_the_columns(tmp_path):
    err = error_of(write(tmp_path / "m.csv", "\nreview,label\nnice,1\n"))
    assert (err.line, err.field) == (2, "text") and "review, label" in err.message
    err = error_of(write(tmp_path / "n.csv", "text,stars\nnice,1\n"))
    assert (err.line, err.field) == (1, "label") and "text, stars" in err.message
    err = error_of(write(tmp_path / "o.csv", "text,stars\nnice,1\n"), column_map={"label": "rating"})
    assert err.field == "label" and "rating" in err.message and "text, stars" in err.message


def test_csv_row_with_the_wrong_number_of_fields(tmp_path):
    err = error_of(write(tmp_path / "w.csv", 'text,label\n"multi\nline",a\nx,b,extra\n'))
    assert err.line == 4 and "3 fields" in err.message


def test_empty_text(tmp_path):
    err = error_of(write(tmp_path / "e.csv", 'text,label\na,x\n"\n  ",y\n'))
    assert (err.line, err.field) == (3, "text") and "empty text" in err.message
    assert error_of([{"text": "a", "text_pair": "", "label": "x"}]).field == "text_pair"


def test_non_string_text():
    err = error_of([{"text": ["a"], "label": "x"}])
    assert (err.line, err.field) == (1, "text") and "must be a string" in err.message


def test_classification_with_one_label(tmp_path):
    err = error_of(jsonl(tmp_path / "one.jsonl", [{"text": "a", "label": "x"}, {"text": "b", "label": "x"}]))
    assert err.field == "label" and "only one label ('x') in 2 rows" in err.message


def test_unknown_label_against_task_json(tmp_path):
    write(tmp_path / "task.json", json.dumps({"name": "t", "task_type": "classification", "labels": ["a", "b"]}))
    jsonl(tmp_path / "train.jsonl", [{"text": "x", "label": "a"}, {"text": "y", "label": "c"}])
    err = error_of(tmp_path)
    assert (err.line, err.field, err.file) == (2, "label", f"{tmp_path.name}/train.jsonl")
    assert "unknown label 'c' (expected one of a, b)" in err.message


def test_unknown_tag_against_task_json(tmp_path):
    write(tmp_path / "task.json", json.dumps({"name": "t", "task_type": "sequence_labeling", "labels": ["O"]}))
    jsonl(tmp_path / "train.jsonl", [{"tokens": ["a"], "tags": ["O"]}, {"tokens": ["a", "b"], "tags": ["O", "X"]}])
    err = error_of(tmp_path)
    assert (err.line, err.field) == (2, "tags") and "unknown label 'X'" in err.message


def test_non_numeric_regression_label(tmp_path):
    err = error_of(write(tmp_path / "train.csv", "text,label\na,1.5\nb,abc\n"), task_type="regression")
    assert (err.line, err.field) == (3, "label")
    assert str(err) == "train.csv, line 3, field 'label': regression label 'abc' is not a number"


@pytest.mark.parametrize("bad", ["nan", "inf", "-Infinity"])
def test_nan_or_inf_regression_label(tmp_path, bad):
    err = error_of(write(tmp_path / "r.csv", f"text,score\na,0.5\nb,{bad}\n"))
    assert (err.line, err.field) == (3, "label") and "not a finite number" in err.message


def test_nan_regression_label_in_json(tmp_path):
    err = error_of(write(tmp_path / "r.jsonl", '{"text": "a", "label": 0.5}\n{"text": "b", "label": NaN}\n'))
    assert (err.line, err.field) == (2, "label") and "finite" in err.message


def test_tokens_and_tags_length_mismatch():
    err = error_of([{"tokens": ["a"], "tags": ["O"]}, {"tokens": ["a", "b"], "tags": ["O"]}])
    assert (err.line, err.field) == (2, "tags") and "2 tokens but 1 tags" in err.message


def test_empty_tokens():
    err = error_of([{"tokens": [], "tags": []}], task_type="sequence_labeling")
    assert (err.line, err.field) == (1, "tokens") and "empty" in err.message


def test_non_string_tokens():
    err = error_of([{"tokens": ["a", 3], "tags": ["O", "O"]}])
    assert (err.line, err.field) == (1, "tokens") and "tokens[1] must be a string" in err.message


def test_conll_line_with_one_field(tmp_path):
    err = error_of(write(tmp_path / "x.conll", "EU B-ORG\nrejects\n"))
    assert err.line == 2 and "one field" in err.message


def test_conll_columns_must_be_consistent(tmp_path):
    err = error_of(write(tmp_path / "x.txt", "The cat sat on the mat .\nIt was happy .\n"))
    assert err.line == 2 and "columns" in err.message


def test_qa_answer_not_at_answer_start():
    err = error_of([squad_row(), squad_row("q2", "North Sea", start=3)])
    assert (err.line, err.field) == (2, "answers") and "not found at answer_start 3" in err.message


def test_qa_answer_start_out_of_range():
    err = error_of([squad_row(start=len(CONTEXT))])
    assert (err.line, err.field) == (1, "answers") and "outside the context" in err.message


def test_qa_answer_lists_of_different_lengths():
    row = squad_row()
    row["answers"]["answer_start"].append(4)
    err = error_of([row])
    assert (err.line, err.field) == (1, "answers") and "1 texts but 2 answer_start" in err.message


def test_squad_json_error_names_the_question(tmp_path):
    data = {"data": [{"paragraphs": [{"context": CONTEXT, "qas": [
        {"id": "a", "question": "Q?", "answers": [{"text": "Rhine", "answer_start": 0}]}]}]}]}
    err = error_of(write(tmp_path / "s.json", json.dumps(data)))
    assert err.field == "answers" and "data[0].paragraphs[0].qas[0]" in err.message


def test_more_rows_than_the_limit_stops_at_the_first_extra_row(tmp_path):
    path = write(tmp_path / "big.csv", "text,label\n" + "".join(f"t{i},{i % 2}\n" for i in range(10)))
    err = error_of(path, limits=LoadLimits(max_rows=4))
    assert err.line == 6 and "more than 4 rows (limit TASKRANK_MAX_ROWS)" in err.message
    assert len(load_dataset(path, limits=LoadLimits(max_rows=10))) == 10


def test_text_longer_than_the_limit(tmp_path):
    err = error_of(write(tmp_path / "l.csv", "text,text_pair,label\na,b,x\nc,ddddd,y\n"),
                   limits=LoadLimits(max_text_chars=4))
    assert (err.line, err.field) == (3, "text_pair") and "5 characters" in err.message
    err = error_of([squad_row()], limits=LoadLimits(max_text_chars=40))
    assert err.field == "context"
    err = error_of([{"tokens": ["abc", "de"], "tags": ["O", "O"]}], limits=LoadLimits(max_text_chars=5))
    assert err.field == "tokens"


def test_missing_path_and_folder_without_task_json(tmp_path):
    err = error_of(tmp_path / "nope.csv")
    assert "no such file" in err.message and "nope.csv" in str(err)
    err = error_of(tmp_path)
    assert "task.json" in err.message and str(tmp_path) in str(err)


def test_missing_split_lists_the_splits(tmp_path):
    write(tmp_path / "task.json", json.dumps({"name": "t", "task_type": "regression"}))
    jsonl(tmp_path / "train.jsonl", [{"text": "a", "label": 0.5}])
    err = error_of(tmp_path, split="test")
    assert "no split 'test'" in err.message and "train" in err.message


def test_unknown_extension_that_cannot_be_sniffed(tmp_path):
    err = error_of(write(tmp_path / "notes.xyz", "just some prose\nwith lines\n"))
    assert "supported" in err.message and ".jsonl" in err.message and ".csv" in err.message


def test_deeply_nested_json_is_a_dataset_error(tmp_path):
    deep = "[" * 100_000 + "]" * 100_000
    err = error_of(write(tmp_path / "deep.json", deep))
    assert "nested too deeply" in err.message
    err = error_of(write(tmp_path / "deep.jsonl", '{"text": "a", "label": "b"}\n' + deep + "\n"))
    assert err.line == 2 and "nested too deeply" in err.message


def test_bad_task_type_and_column_map():
    assert error_of([{"text": "a", "label": "b"}], task_type="ranking").field == "task_type"
    assert error_of([{"text": "a", "label": "b"}], column_map={"txt": "a"}).field == "txt"


def test_labels_mixing_numbers_and_text_are_refused(tmp_path):
    """`2.5, 3, neg, pos` is neither a regression nor a plausible 4-class task: say where the kinds meet."""
    err = error_of(write(tmp_path / "mixed.csv", "text,label\na,2.5\nb,3\nc,neg\nd,pos\n"))
    assert (err.line, err.field, err.file) == (4, "label", "mixed.csv")
    assert "mixed label types: 'neg' is text but line 2 has '2.5', a number" in err.message
    err = error_of(jsonl(tmp_path / "mixed.jsonl", [{"text": "a", "label": "pos"}, {"text": "b", "label": 1}]))
    assert err.line == 2 and "1 is a number but line 1 has 'pos', text" in err.message
    err = error_of([{"text": "a", "label": 0.5}, {"text": "b", "label": "neg"}])  # rows posted as JSON
    assert err.line == 2 and "mixed label types" in err.message


def test_mixed_labels_with_an_explicit_task_type_are_read_as_it_says(tmp_path):
    path = write(tmp_path / "mixed.csv", "text,label\na,2.5\nb,3\nc,neg\nd,pos\n")
    assert load_dataset(path, task_type="classification").labels == ["2.5", "3", "neg", "pos"]
    numbers_as_json_strings = jsonl(tmp_path / "s.jsonl", [{"text": "a", "label": "1"}, {"text": "b", "label": "x"}])
    assert load_dataset(numbers_as_json_strings).labels == ["1", "x"]  # JSON strings are class names


def test_garbage_column_names_are_shown_escaped(tmp_path):
    err = error_of(write(tmp_path / "junk.csv", b"\x01\x02PK\x03\x04,\x1b[2J" + b"x" * 100 + b"\nrow,1\nrow,2\n"))
    assert err.field == "text" and "columns found: \\x01\\x02PK\\x03\\x04, \\x1b[2J" in err.message
    assert err.message.isprintable() and "…" in err.message  # the long name is cut
