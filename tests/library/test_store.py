"""LibraryStore on SQLite and PostgreSQL (every test runs on both via the `store` fixture)."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import func, select

from library.db import normalize_database_url
from library.errors import LibraryError
from library.store import EmbeddingKey, LibraryStore, SourceTask, TaskEmbeddingRow
from tests.library.helpers import MODEL, MODEL_HASH, data_hash, make_result


def _add(store: LibraryStore, name: str, task_type: str = "classification") -> SourceTask:
    return store.add_task(
        name,
        task_type,
        num_train=100,
        num_dev=10,
        data_hash=data_hash(name),
        description=f"{name} task",
        provenance={"source": "hub", "license": "cc-by", "build": {"seed": 13}},
    )


def _taskemb(seed: int, dim: int = 8) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {c: rng.normal(size=dim) for c in ("cls_output", "layer_0.attention_output", "layer_0.output")}


def _embedding_rows(store: LibraryStore) -> int:
    with store.engine.connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(TaskEmbeddingRow)) or 0)


def test_add_list_get_remove(store: LibraryStore) -> None:
    sst = _add(store, "sst2")
    _add(store, "mnli")
    assert [t.name for t in store.list_tasks()] == ["mnli", "sst2"]
    got = store.get_task("sst2")
    assert got == sst
    assert got.provenance == {"source": "hub", "license": "cc-by", "build": {"seed": 13}}
    assert got.num_dev == 10 and got.created_at.tzinfo is not None
    assert store.get_task("nope") is None

    removed = store.remove_task("sst2")
    assert removed.id == sst.id
    assert [t.name for t in store.list_tasks()] == ["mnli"]
    store.remove_task(store.get_task("mnli").id)  # by id
    assert store.list_tasks() == []
    with pytest.raises(LibraryError, match="no source task"):
        store.remove_task("sst2")


def test_rejects_duplicates_and_bad_input(store: LibraryStore) -> None:
    _add(store, "sst2")
    with pytest.raises(LibraryError, match="already exists"):
        _add(store, "sst2")
    with pytest.raises(LibraryError, match="task_type"):
        store.add_task("x", "ranking", num_train=1, data_hash=data_hash("x"))
    with pytest.raises(LibraryError, match="sha256"):
        store.add_task("x", "regression", num_train=1, data_hash="abc")


def test_embeddings_roundtrip_unnormalised(store: LibraryStore) -> None:
    a, b = _add(store, "a"), _add(store, "b")
    va, vb = _taskemb(1), _taskemb(2)
    assert store.add_embedding(a.id, make_result("taskemb", va)) == 3
    store.add_embedding(b.id, make_result("taskemb", vb))
    store.add_embedding(a.id, make_result("semb", {"sentence": np.full(4, 3.0)}))

    ids, matrix = store.vectors(MODEL, "taskemb", "cls_output")
    assert ids.dtype == np.int64 and matrix.dtype == np.float32
    assert ids.tolist() == [a.id, b.id]
    np.testing.assert_array_equal(matrix, np.stack([va["cls_output"], vb["cls_output"]]).astype(np.float32))
    _, semb = store.vectors(MODEL, "semb", "sentence")
    np.testing.assert_array_equal(semb, [[3.0, 3.0, 3.0, 3.0]])  # stored as given, not normalised

    assert store.keys() == [
        EmbeddingKey(MODEL, MODEL_HASH, "semb", "sentence"),
        EmbeddingKey(MODEL, MODEL_HASH, "taskemb", "cls_output"),
        EmbeddingKey(MODEL, MODEL_HASH, "taskemb", "layer_0.attention_output"),
        EmbeddingKey(MODEL, MODEL_HASH, "taskemb", "layer_0.output"),
    ]
    empty_ids, empty = store.vectors(MODEL, "textemb", "text")
    assert empty_ids.shape == (0,) and empty.shape[0] == 0


def test_readding_replaces_components(store: LibraryStore) -> None:
    a = _add(store, "a")
    store.add_embedding(a.id, make_result("taskemb", _taskemb(1)))
    store.add_embedding(a.id, make_result("taskemb", {"cls_output": np.ones(8)}))
    assert {k.component for k in store.keys()} == {"cls_output"}
    np.testing.assert_array_equal(store.vectors(MODEL, "taskemb", "cls_output")[1], np.ones((1, 8)))


def test_add_embedding_is_one_transaction(store: LibraryStore) -> None:
    a = _add(store, "a")
    bad = _taskemb(1)
    bad["layer_0.output"] = np.zeros(8)  # the last component is invalid: nothing may be written
    with pytest.raises(LibraryError, match="all-zero"):
        store.add_embedding(a.id, make_result("taskemb", bad))
    b = _add(store, "b")
    store.add_embedding(b.id, make_result("semb", {"sentence": np.ones(4)}))
    before = _embedding_rows(store)
    with pytest.raises(LibraryError, match="hash"):  # fails inside the transaction, after the checks began
        store.add_embedding(a.id, make_result("semb", {"sentence": np.ones(4)}, model_hash="b" * 64))
    with pytest.raises(LibraryError, match="dimension"):
        store.add_embedding(a.id, make_result("semb", {"sentence": np.ones(5)}))
    assert _embedding_rows(store) == before == 1
    with pytest.raises(LibraryError, match="no source task"):
        store.add_embedding(10_000, make_result("semb", {"sentence": np.ones(4)}))


def test_remove_cascades_to_embeddings(store: LibraryStore) -> None:
    a, b = _add(store, "a"), _add(store, "b")
    store.add_embedding(a.id, make_result("taskemb", _taskemb(1)))
    store.add_embedding(b.id, make_result("taskemb", _taskemb(2)))
    assert _embedding_rows(store) == 6
    store.remove_task("a")
    assert _embedding_rows(store) == 3
    assert store.vectors(MODEL, "taskemb", "cls_output")[0].tolist() == [b.id]
    store.remove_task("b")
    assert _embedding_rows(store) == 0 and store.keys() == []


def test_version_bumps_on_every_write(store: LibraryStore) -> None:
    seen = [store.version()]
    a = _add(store, "a")
    seen.append(store.version())
    assert a.library_version == seen[-1]  # the task records the version it was added in
    store.add_embedding(a.id, make_result("semb", {"sentence": np.ones(4)}))
    seen.append(store.version())
    store.remove_task("a")
    seen.append(store.version())
    assert len(set(seen)) == 4
    with pytest.raises(LibraryError):
        store.remove_task("a")
    assert store.version() == seen[-1]  # a failed write rolls back its bump
    assert store.version() == seen[-1]  # and reading does not bump


def test_version_survives_reopen(store_url: str) -> None:
    with LibraryStore(store_url) as first:
        _add(first, "a")
        version = first.version()
    with LibraryStore(store_url) as second:
        assert second.version() == version
        assert [t.name for t in second.list_tasks()] == ["a"]


def test_url_normalisation(tmp_path) -> None:
    assert normalize_database_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalize_database_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalize_database_url("sqlite:///x.db") == "sqlite:///x.db"
    with LibraryStore.from_data_dir(tmp_path / "d") as s:
        assert (tmp_path / "d" / "taskrank.db").exists()
        with s.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
