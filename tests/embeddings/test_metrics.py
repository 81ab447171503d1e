"""Every metric against values computed by hand (the arithmetic is in the comments)."""

from __future__ import annotations

import math

import pytest

from embeddings.metrics import (
    accuracy,
    chunks,
    entity_f1,
    macro_f1,
    matthews_corrcoef,
    normalize_answer,
    pearson,
    spearman,
    squad_scores,
    token_accuracy,
)


def test_accuracy_and_macro_f1():
    pred, gold = ["a", "a", "b", "b", "c"], ["a", "b", "b", "b", "a"]
    assert accuracy(pred, gold) == pytest.approx(3 / 5)
    # a: tp1 fp1 fn1 -> 2/4 = .5 ; b: tp2 fp0 fn1 -> 4/5 = .8 ; c: tp0 fp1 fn0 -> 0 ; mean = 1.3/3
    assert macro_f1(pred, gold) == pytest.approx(1.3 / 3)


def test_matthews_binary_and_degenerate():
    # tp=2, fp=1 (pred 1, gold 0), fn=1, tn=1:
    # (tp*tn - fp*fn) / sqrt((tp+fp)(tp+fn)(tn+fp)(tn+fn)) = (2-1)/sqrt(3*3*2*2) = 1/6
    pred, gold = [1, 1, 1, 0, 0], [1, 1, 0, 1, 0]
    assert matthews_corrcoef(pred, gold) == pytest.approx(1 / 6)
    assert matthews_corrcoef([1, 1, 1], [1, 0, 1]) == 0.0  # constant prediction: 0 by convention


def test_pearson_and_spearman():
    x, y = [1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 5.0, 4.0]
    # means 2.5 and 3.75; cov = (-1.5*-1.75 + -.5*.25 + .5*1.25 + 1.5*.25)/4 = 3.5/4
    # sx = sqrt(5/4), sy = sqrt((3.0625+.0625+1.5625+.0625)/4) = sqrt(4.75/4)
    assert pearson(x, y) == pytest.approx(3.5 / math.sqrt(5 * 4.75))
    # ranks of y with ties: [1, 2.5, 4, 2.5] -> pearson([1,2,3,4], [1,2.5,4,2.5])
    assert spearman(x, y) == pytest.approx(pearson([1, 2, 3, 4], [1, 2.5, 4, 2.5]))
    assert spearman([3, 1, 2], [30, 10, 20]) == pytest.approx(1.0)


def test_squad_v1_and_v2():
    assert normalize_answer("The  Swiss Alps!") == "swiss alps"
    scores = squad_scores(["the Swiss Alps", "North", "", "Paris"],
                          [["Swiss Alps", "the Alps"], ["North Sea"], [], ["London"]])
    # EM: 1, 0, 1 (empty for unanswerable), 0 -> 50% ; F1: 1, 2*(1*.5)/1.5=2/3, 1, 0 -> (2+2/3)/4
    assert scores["exact_match"] == pytest.approx(50.0)
    assert scores["f1"] == pytest.approx(100 * (2 + 2 / 3) / 4)
    assert squad_scores(["something"], [[]]) == {"exact_match": 0.0, "f1": 0.0}  # answered an unanswerable


def test_chunks_follow_conlleval():
    assert chunks(["B-PER", "I-PER", "O", "B-LOC"]) == {("PER", 0, 2), ("LOC", 3, 4)}
    assert chunks(["I-PER", "I-PER"]) == {("PER", 0, 2)}  # IOB1: I may open a chunk
    assert chunks(["B-PER", "B-PER"]) == {("PER", 0, 1), ("PER", 1, 2)}
    assert chunks(["B-PER", "I-LOC"]) == {("PER", 0, 1), ("LOC", 1, 2)}
    assert chunks(["B-NP", "I-NP", "B-VP"]) == {("NP", 0, 2), ("VP", 2, 3)}


def test_entity_f1_and_token_accuracy():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    pred = [["B-PER", "I-PER", "O", "O"], ["B-ORG", "B-LOC"]]
    # gold chunks 3; predicted 3 (PER, ORG, LOC@1); correct 2 -> P = R = F1 = 2/3
    scores = entity_f1(pred, gold)
    assert scores["precision"] == pytest.approx(200 / 3) and scores["f1"] == pytest.approx(200 / 3)
    assert token_accuracy(pred, gold) == pytest.approx(100 * 4 / 6)
