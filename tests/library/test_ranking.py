"""SourceLibrary.rank on hand-made libraries whose similarities (and so ranks) are known."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from library.errors import LibraryError
from library.ranking import SourceLibrary
from library.store import LibraryStore
from tests.library.conftest import AddSource
from tests.library.helpers import data_hash, make_result


def unit(cos: float) -> np.ndarray:
    """A 2-D vector at cosine `cos` to [1, 0] (and sqrt(1 - cos^2) to [0, 1])."""
    return np.array([cos, math.sqrt(1 - cos * cos)])


def flip(cos: float) -> np.ndarray:
    """A 2-D vector at cosine `cos` to [0, 1]."""
    return unit(cos)[::-1].copy()


def taskemb(c1: np.ndarray, c2: np.ndarray, **kw) -> object:
    return make_result("taskemb", {"cls_output": c1, "layer_0.output": c2}, **kw)


TARGET_TASKEMB = {"cls_output": np.array([1.0, 0.0]), "layer_0.output": np.array([0.0, 1.0])}


@pytest.fixture
def library(sqlite_store: LibraryStore, tmp_path) -> SourceLibrary:
    return SourceLibrary(sqlite_store, tmp_path / "idx", similarity="cosine")  # these tests check cosine arithmetic


def test_taskemb_rrf_arithmetic(library: SourceLibrary, add_source: AddSource) -> None:
    # cls_output similarities: a 1.0, b 0.8, c 0.6  -> ranks a1 b2 c3
    # layer_0.output:          b 1.0, c 0.8, a 0.6  -> ranks b1 c2 a3
    add_source("a", t=taskemb(unit(1.0), flip(0.6)))
    add_source("b", t=taskemb(unit(0.8), flip(1.0)))
    add_source("c", t=taskemb(unit(0.6), flip(0.8)))
    ranking = library.rank({"taskemb": make_result("taskemb", TARGET_TASKEMB)}, "taskemb")
    # b = 1/62 + 1/61 = 0.032522, a = 1/61 + 1/63 = 0.032266, c = 1/63 + 1/62 = 0.032002
    assert ranking.names() == ["b", "a", "c"]
    b, a, c = ranking.sources
    assert b.score == pytest.approx(1 / 62 + 1 / 61)
    assert a.score == pytest.approx(1 / 61 + 1 / 63)
    assert c.score == pytest.approx(1 / 63 + 1 / 62)
    assert [s.rank for s in ranking.sources] == [1, 2, 3]
    assert a.details["cls_output"]["rank"] == 1 and a.details["layer_0.output"]["rank"] == 3
    assert a.details["cls_output"]["similarity"] == pytest.approx(1.0, abs=1e-6)
    assert a.details["layer_0.output"]["similarity"] == pytest.approx(0.6, abs=1e-6)
    json.dumps(ranking.to_dict())  # JSON-ready
    assert ranking.to_dict()["target"] == {
        "name": "target",
        "hash": data_hash("target"),
        "task_type": "classification",
    }


def test_single_component_ranking_is_cosine(library: SourceLibrary, add_source: AddSource) -> None:
    for name, cos in [("far", 0.1), ("near", 0.9), ("mid", 0.5)]:
        add_source(name, s=make_result("semb", {"sentence": unit(cos) * 7}))  # length must not matter
    ranking = library.rank({"semb": make_result("semb", {"sentence": np.array([2.0, 0.0])})}, "semb", top_k=2)
    assert ranking.names() == ["near", "mid"]
    assert [s.score for s in ranking.sources] == pytest.approx([0.9, 0.5], abs=1e-6)
    assert ranking.sources[0].details == {"sentence": {"rank": 1, "similarity": pytest.approx(0.9, abs=1e-6)}}
    assert ranking.library_version == library.store.version()


def test_ties_are_broken_by_name(library: SourceLibrary, add_source: AddSource) -> None:
    for name in ("zeta", "alpha", "mu"):
        add_source(name, t=make_result("textemb", {"text": np.array([1.0, 1.0])}))
    ranking = library.rank({"textemb": make_result("textemb", {"text": np.array([1.0, 0.0])})}, "textemb")
    assert ranking.names() == ["alpha", "mu", "zeta"]
    # RRF tie: x ranks (1, 2), y ranks (2, 1) -> both 1/61 + 1/62 exactly.
    add_source("y", t=taskemb(unit(0.8), flip(1.0)))
    add_source("x", t=taskemb(unit(1.0), flip(0.8)))
    fused = library.rank({"taskemb": make_result("taskemb", TARGET_TASKEMB)}, "taskemb")
    assert fused.names() == ["x", "y"] and fused.sources[0].score == fused.sources[1].score


def test_in_class_all_class_and_self_exclusion(library: SourceLibrary, add_source: AddSource) -> None:
    add_source("cls_src", s=make_result("semb", {"sentence": unit(0.9)}))
    add_source("reg_src", "regression", s=make_result("semb", {"sentence": unit(1.0)}))
    add_source("target", s=make_result("semb", {"sentence": unit(1.0)}))  # the target itself (same data hash)
    add_source("dup", s=make_result("semb", {"sentence": unit(0.5)}))
    target = {"semb": make_result("semb", {"sentence": unit(1.0)})}

    assert library.rank(target, "semb").names() == ["cls_src", "dup"]
    assert library.rank(target, "semb", all_class=True).names() == ["reg_src", "cls_src", "dup"]
    assert library.rank(target, "semb", exclude_hash=data_hash("dup")).names() == ["cls_src"]
    assert library.rank(target, "semb", all_class=True).sources[0].task_type == "regression"


def test_ensemble_fuses_three_rankings(library: SourceLibrary, add_source: AddSource) -> None:
    # textemb ranks: p1 q2; semb ranks: q1 p2; taskemb (fused): p beats q on both components.
    add_source(
        "p",
        t=make_result("textemb", {"text": unit(0.9)}),
        s=make_result("semb", {"sentence": unit(0.2)}),
        k=taskemb(unit(0.9), flip(0.9)),
    )
    add_source(
        "q",
        t=make_result("textemb", {"text": unit(0.3)}),
        s=make_result("semb", {"sentence": unit(0.8)}),
        k=taskemb(unit(0.1), flip(0.1)),
    )
    targets = {
        "textemb": make_result("textemb", {"text": unit(1.0)}),
        "semb": make_result("semb", {"sentence": unit(1.0)}),
        "taskemb": make_result("taskemb", TARGET_TASKEMB),
    }
    ranking = library.rank(targets, "ensemble")
    # p = 1/61 (textemb) + 1/62 (semb) + 1/61 (taskemb); q = 1/62 + 1/61 + 1/62
    assert ranking.names() == ["p", "q"]
    assert ranking.sources[0].score == pytest.approx(2 / 61 + 1 / 62)
    assert ranking.sources[1].score == pytest.approx(1 / 61 + 2 / 62)
    assert set(ranking.sources[0].details) == {"textemb", "semb", "taskemb"}
    assert ranking.sources[0].details["semb"] == {"rank": 2, "similarity": pytest.approx(0.2, abs=1e-6)}
    assert ranking.sources[0].details["taskemb"]["similarity"] == pytest.approx(0.9, abs=1e-6)  # mean cosine

    with pytest.raises(LibraryError, match="ensemble needs .*missing: semb"):
        library.rank({m: targets[m] for m in ("textemb", "taskemb")}, "ensemble")


def test_errors_are_clear(library: SourceLibrary, add_source: AddSource) -> None:
    add_source("a", s=make_result("semb", {"sentence": unit(0.5)}), k=taskemb(unit(0.5), flip(0.5)))
    target = make_result("semb", {"sentence": unit(1.0)})
    with pytest.raises(LibraryError, match="unknown ranking method"):
        library.rank({"semb": target}, "fisher")
    with pytest.raises(LibraryError, match="needs the target's textemb"):
        library.rank({"semb": target}, "textemb")
    with pytest.raises(LibraryError, match="is a 'semb' embedding"):
        library.rank({"textemb": target}, "textemb")
    other = make_result("semb", {"sentence": unit(1.0)}, model_name="bert-base", model_hash="f" * 64)
    with pytest.raises(LibraryError, match="library built with model test/encoder .* re-embed the target"):
        library.rank({"semb": other}, "semb")
    with pytest.raises(LibraryError, match="re-embed the target"):
        library.rank({"taskemb": make_result("taskemb", TARGET_TASKEMB, model_name="bert-base")}, "taskemb")
    with pytest.raises(LibraryError, match="no taskemb component in common"):
        library.rank({"taskemb": make_result("taskemb", {"layer_9.output": unit(1.0)})}, "taskemb")
    with pytest.raises(LibraryError, match="disagree"):
        library.rank(
            {
                "semb": target,
                "textemb": make_result("textemb", {"text": unit(1.0)}, dataset="other"),
                "taskemb": make_result("taskemb", TARGET_TASKEMB),
            },
            "ensemble",
        )


def test_ranking_sees_library_changes(library: SourceLibrary, add_source: AddSource) -> None:
    add_source("a", s=make_result("semb", {"sentence": unit(0.5)}))
    target = {"semb": make_result("semb", {"sentence": unit(1.0)})}
    assert library.rank(target, "semb").names() == ["a"]
    add_source("b", s=make_result("semb", {"sentence": unit(0.9)}))
    assert library.rank(target, "semb").names() == ["b", "a"]
    library.store.remove_task("b")
    assert library.rank(target, "semb").names() == ["a"]


def test_service_can_serve_the_library_from_an_hnsw_index(sqlite_store: LibraryStore, add_source: AddSource,
                                                          tmp_path) -> None:
    """TASKRANK_INDEX_KIND=hnsw: the approximate index is built, saved with its kind, and ranks like exact."""
    from library.service import LibraryService
    from library.settings import Settings

    for name, cos in [("far", 0.1), ("near", 0.9), ("mid", 0.5), ("close", 0.7)]:
        add_source(name, s=make_result("semb", {"sentence": unit(cos)}))
    query = {"semb": make_result("semb", {"sentence": np.array([1.0, 0.0])})}
    exact = SourceLibrary(sqlite_store, tmp_path / "flat", similarity="cosine").rank(query, "semb")
    settings = Settings(data_dir=tmp_path / "data", index_kind="hnsw", hnsw_ef_search=64, similarity="cosine")
    with LibraryService.from_settings(settings, ensure_default=False) as service:
        approximate = service.library.rank(query, "semb")
        index = next(iter(service.library.indexes._cache.values()))
        assert index.info.kind == "hnsw" and index.ef_search == 64
    assert approximate.names() == exact.names() == ["near", "close", "mid", "far"]
    assert json.loads(next((tmp_path / "data" / "indexes").glob("*.json")).read_text())["kind"] == "hnsw"
