"""Ranking against the SHIPPED default library with the real encoder (integration: real model, real data)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from embeddings.data import load_dataset
from embeddings.encoders import Encoder, load_encoder
from library.build import library_options
from library.bundle import MANIFEST, default_library_path, ensure_default_library
from library.pipeline import rank_target
from library.ranking import SourceLibrary
from library.store import LibraryStore

pytestmark = pytest.mark.integration

SHARED_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
NLI = {"rte", "mnli", "snli", "qnli", "wnli"}


@pytest.fixture(scope="module")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared task data not found at {SHARED_DATA.resolve()} (expected ../shared/data)")
    return SHARED_DATA


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory):
    if not (default_library_path() / MANIFEST).is_file():
        pytest.skip(f"no default library shipped at {default_library_path()}")
    root = tmp_path_factory.mktemp("real")
    store = LibraryStore.from_data_dir(root)
    assert ensure_default_library(store) is not None
    yield SourceLibrary(store, root / "indexes")
    store.close()


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    return load_encoder("default", "cpu")


def _slice(shared_data: Path, name: str, rows: int = 200):
    return load_dataset(shared_data / name).subsample(rows, seed=7)


def test_default_library_matches_the_encoder(library: SourceLibrary, encoder: Encoder) -> None:
    keys = library.store.keys()
    assert {k.model_name for k in keys} == {encoder.name}
    assert {k.model_hash for k in keys} == {encoder.weights_hash}
    assert library_options(library.store).max_rows == 1000


@pytest.mark.parametrize(
    ("target", "neighbours"),
    [
        ("sst2", {"sentence_polarity", "subjectivity", "movie_reviews"}),  # sentiment / opinion text
        ("squad_v1", {"squad_v2", "qnli"}),  # Wikipedia paragraphs and questions
        ("ptb_pos", {"ptb_parent", "ptb_gparent", "ptb_ggparent", "conll2000_chunk"}),  # WSJ sentences
    ],
)
def test_textemb_ranks_the_own_task_first_then_same_domain_tasks(
    library, encoder, shared_data, target, neighbours
):
    """All-class TextEmb: a 200-row slice finds its own task, then the tasks over the same kind of text."""
    ranking = rank_target(
        _slice(shared_data, target), library, encoder, "textemb", top_k=100, all_class=True
    )
    assert len(ranking.sources) == 30  # a 200-row slice is not the library's data: nothing excluded
    names = ranking.names()
    top = set(names[: len(neighbours) + 1])
    assert top == neighbours | {target}, names


def test_textemb_sees_text_not_labels(library, encoder, shared_data) -> None:
    """The four PTB tagging tasks share their sentences: identical TextEmb similarity to any target."""
    ranking = rank_target(
        _slice(shared_data, "mnli"), library, encoder, "textemb", top_k=100, all_class=True
    )
    sims = {s.name: s.score for s in ranking.sources}
    assert len({round(sims[n], 5) for n in ("ptb_pos", "ptb_parent", "ptb_gparent", "ptb_ggparent")}) == 1
    assert ranking.names()[0] == "mnli"


@pytest.mark.xfail(
    strict=True,
    reason="TextEmb measures the text domain, not the task: MNLI's nearest sources are brown_pos/brown_genre "
    "(multi-genre text) and SNLI (image captions) ranks last for it, below every tagging task",
)
def test_textemb_ranks_nli_tasks_above_tagging_tasks(library, encoder, shared_data) -> None:
    ranking = rank_target(
        _slice(shared_data, "mnli"), library, encoder, "textemb", top_k=100, all_class=True
    )
    ranks = {s.name: s.rank for s in ranking.sources}
    tagging = [s.name for s in ranking.sources if s.task_type == "sequence_labeling"]
    assert len(tagging) == 8
    assert max(ranks[n] for n in NLI - {"mnli"}) < min(ranks[t] for t in tagging), ranking.names()


def test_in_class_mode_returns_only_the_targets_type(library, encoder, shared_data) -> None:
    target = _slice(shared_data, "conll2003_ner")
    ranking = rank_target(target, library, encoder, "semb", top_k=100)
    assert ranking.target.task_type == "sequence_labeling"
    assert {s.task_type for s in ranking.sources} == {"sequence_labeling"}
    assert len(ranking.sources) == 8


def test_the_targets_own_task_is_excluded_by_its_full_data_hash(library, encoder, shared_data) -> None:
    full = load_dataset(shared_data / "rte")
    assert library.store.get_task("rte").data_hash == full.content_hash
    ranking = rank_target(full, library, encoder, "textemb", top_k=100, all_class=True)
    assert "rte" not in ranking.names() and len(ranking.sources) == 29
    sliced = rank_target(_slice(shared_data, "rte"), library, encoder, "textemb", top_k=100, all_class=True)
    assert "rte" in sliced.names()[:5]  # other data of the same task is not excluded, and ranks high


def test_taskemb_explanation_has_one_rank_per_component(library, encoder, shared_data) -> None:
    target = _slice(shared_data, "sst2")
    ranking = rank_target(target, library, encoder, "taskemb", top_k=5)
    components = {
        k.component for k in library.store.keys() if k.method == "taskemb" and k.model_name == encoder.name
    }
    assert len(components) == 13  # cls_output + 6 layers x (attention_output, output)
    assert len(ranking.sources) == 5
    for source in ranking.sources:
        assert set(source.details) == components
        assert all(1 <= d["rank"] <= 19 for d in source.details.values())  # 19 classification sources
    json.dumps(ranking.to_dict())


@pytest.mark.parametrize("method", ["textemb", "semb", "taskemb", "ensemble"])
def test_selection_variants_bench_ranks_like_the_service(library: SourceLibrary, method: str) -> None:
    """bench/selection_variants.py re-implements the ranking to try other similarities; its `cosine`
    variant must be exactly what the service ranks by with TASKRANK_SIMILARITY=cosine, or its
    comparisons mean nothing."""
    from bench.selection_variants import ENSEMBLE_OF, load_library, method_ranks, ranks_by, rrf
    from library.service import stored_targets

    vectors, _ = load_library(default_library_path())
    tasks = sorted(vectors)
    task = {t.name: t for t in library.store.list_tasks()}["stsb"]
    stored = stored_targets(library.store, task)
    needed = ("textemb", "semb", "taskemb") if method == "ensemble" else (method,)
    cosine = SourceLibrary(library.store, library.indexes.index_dir.parent / "cosine-indexes", similarity="cosine")
    served = cosine.rank({m: stored[m] for m in needed}, method, top_k=len(tasks), all_class=True).names()
    if method == "ensemble":
        ranks = ranks_by(rrf([method_ranks(vectors, tasks, "stsb", m, "cosine") for m in ENSEMBLE_OF]))
    else:
        ranks = method_ranks(vectors, tasks, "stsb", method, "cosine")
    assert sorted(ranks, key=ranks.get) == served
