"""FAISS indexes: exactness vs numpy, removal, persistence, crash repair, model checks, HNSW recall."""

from __future__ import annotations

import json

import numpy as np
import pytest

from library.errors import LibraryError
from library.index import IndexInfo, LibraryIndexes, VectorIndex
from library.store import LibraryStore
from tests.library.helpers import MODEL, MODEL_HASH, data_hash, make_result

DIM = 16


def _cosine(matrix: np.ndarray, query: np.ndarray) -> np.ndarray:
    m = matrix / np.linalg.norm(matrix, axis=1, keepdims=True)
    return m @ (query / np.linalg.norm(query))


def _index(kind: str = "flat", dim: int = DIM) -> VectorIndex:
    return VectorIndex(IndexInfo(MODEL, MODEL_HASH, "semb", "sentence", dim, kind=kind))  # type: ignore[arg-type]


def _fill(store: LibraryStore, n: int, seed: int = 0) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(n):
        task = store.add_task(f"task{i:02d}", "classification", num_train=10, data_hash=data_hash(f"task{i}"))
        vec = rng.normal(size=DIM) * rng.uniform(0.1, 10)  # unnormalised on purpose
        store.add_embedding(task.id, make_result("semb", {"sentence": vec}))
        out[task.id] = vec.astype(np.float32)
    return out


def test_search_matches_numpy_bruteforce() -> None:
    rng = np.random.default_rng(1)
    matrix = rng.normal(size=(50, DIM)).astype(np.float32) * 5
    ids = np.arange(100, 150)
    index = _index()
    index.add(ids, matrix)
    query = rng.normal(size=DIM)
    got_ids, sims = index.search(query, 10)
    expected = _cosine(matrix, query)
    order = np.argsort(-expected)[:10]
    assert got_ids.tolist() == ids[order].tolist()
    np.testing.assert_allclose(sims, expected[order], atol=1e-5)
    all_ids, _ = index.search(query, 1000)  # k above ntotal is clamped
    assert sorted(all_ids.tolist()) == ids.tolist()


def test_remove_never_returns_removed_id() -> None:
    rng = np.random.default_rng(2)
    matrix = rng.normal(size=(30, DIM)).astype(np.float32)
    index = _index()
    index.add(np.arange(30), matrix)
    assert index.remove([7, 8, 999]) == 2
    for row in (7, 8):  # a removed vector is not even found by itself
        ids, _ = index.search(matrix[row], index.ntotal)
        assert 7 not in ids and 8 not in ids and len(ids) == 28
    with pytest.raises(LibraryError, match="duplicate"):
        index.add([3], matrix[:1])


def test_save_load_same_results_and_sidecar(tmp_path) -> None:
    rng = np.random.default_rng(3)
    matrix = rng.normal(size=(20, DIM)).astype(np.float32)
    index = _index()
    index.add(np.arange(20) + 5, matrix, names=[f"t{i}" for i in range(20)])
    index.info.library_version = "r7-abc"
    path = index.save(tmp_path)
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar["ids"]["5"] == "t0" and len(sidecar["ids"]) == 20
    assert sidecar["model_name"] == MODEL and sidecar["model_hash"] == MODEL_HASH
    assert (sidecar["method"], sidecar["component"], sidecar["dimension"]) == ("semb", "sentence", DIM)
    assert sidecar["library_version"] == "r7-abc"
    assert not list(tmp_path.glob("*.tmp"))

    loaded = VectorIndex.load(path)
    query = rng.normal(size=DIM)
    for a, b in zip(index.search(query, 20), loaded.search(query, 20), strict=True):
        np.testing.assert_array_equal(a, b)

    path.write_bytes(path.read_bytes()[:-8])  # a torn or foreign index file is refused
    with pytest.raises(LibraryError, match="checksum"):
        VectorIndex.load(path)


def test_model_and_dimension_mismatch_raise() -> None:
    index = _index()
    index.add([1], np.ones((1, DIM)))
    with pytest.raises(
        LibraryError, match=r"library built with model test/encoder \(hash a+\), target embedded with other"
    ):
        index.search(np.ones(DIM), 1, model_name="other", model_hash="b" * 64)
    with pytest.raises(LibraryError, match="re-embed the target with test/encoder"):
        index.search(np.ones(DIM), 1, model_name=MODEL, model_hash="b" * 64)
    with pytest.raises(LibraryError, match="dimension"):
        index.search(np.ones(DIM + 1), 1, model_name=MODEL, model_hash=MODEL_HASH)


def test_indexes_follow_the_store(sqlite_store: LibraryStore, tmp_path) -> None:
    vectors = _fill(sqlite_store, 12)
    indexes = LibraryIndexes(sqlite_store, tmp_path / "idx")
    index = indexes.get(MODEL, "semb", "sentence")
    assert indexes.rebuilds == 1 and sorted(index.ids().tolist()) == sorted(vectors)
    assert indexes.get(MODEL, "semb", "sentence") is index  # unchanged library: cached

    sqlite_store.remove_task("task03")
    index = indexes.get(MODEL, "semb", "sentence")
    removed_id = next(i for i in vectors if i not in index.ids().tolist())
    ids, _ = index.search(vectors[removed_id], index.ntotal)
    assert removed_id not in ids.tolist() and len(ids) == 11

    # A fresh process reloads from disk without rebuilding, and agrees.
    other = LibraryIndexes(sqlite_store, tmp_path / "idx")
    reloaded = other.get(MODEL, "semb", "sentence")
    assert other.rebuilds == 0
    query = np.random.default_rng(9).normal(size=DIM)
    np.testing.assert_array_equal(index.search(query, 11)[0], reloaded.search(query, 11)[0])


def test_stale_but_unchanged_index_is_reloaded_not_rebuilt(sqlite_store: LibraryStore, tmp_path) -> None:
    _fill(sqlite_store, 5)
    LibraryIndexes(sqlite_store, tmp_path / "idx").get(MODEL, "semb", "sentence")
    task = sqlite_store.add_task("other", "regression", num_train=1, data_hash=data_hash("other"))
    sqlite_store.add_embedding(task.id, make_result("textemb", {"text": np.ones(4)}))  # another key only
    fresh = LibraryIndexes(sqlite_store, tmp_path / "idx")
    index = fresh.get(MODEL, "semb", "sentence")
    assert fresh.rebuilds == 0 and index.info.library_version == sqlite_store.version()


def test_crash_between_db_and_index_write_is_repaired(sqlite_store: LibraryStore, tmp_path) -> None:
    vectors = _fill(sqlite_store, 6)
    LibraryIndexes(sqlite_store, tmp_path / "idx").get(MODEL, "semb", "sentence")
    # "Crash": the row reaches the database, the index file is never updated.
    task = sqlite_store.add_task("late", "classification", num_train=1, data_hash=data_hash("late"))
    late = np.random.default_rng(5).normal(size=DIM)
    sqlite_store.add_embedding(task.id, make_result("semb", {"sentence": late}))

    indexes = LibraryIndexes(sqlite_store, tmp_path / "idx")
    index = indexes.get(MODEL, "semb", "sentence")
    assert indexes.rebuilds == 1
    assert sorted(index.ids().tolist()) == sorted([*vectors, task.id])
    ids, sims = index.search(late, 1)
    assert ids.tolist() == [task.id] and sims[0] == pytest.approx(1.0, abs=1e-5)
    sidecar = json.loads(indexes.path(MODEL, "semb", "sentence").with_suffix(".json").read_text())
    assert sidecar["ids"][str(task.id)] == "late"  # repaired on disk too
    assert LibraryIndexes(sqlite_store, tmp_path / "idx").get(MODEL, "semb", "sentence") is not None


def test_replaced_vectors_and_missing_files_trigger_rebuild(sqlite_store: LibraryStore, tmp_path) -> None:
    _fill(sqlite_store, 4)
    indexes = LibraryIndexes(sqlite_store, tmp_path / "idx")
    path = indexes.path(MODEL, "semb", "sentence")
    indexes.get(MODEL, "semb", "sentence")
    target = np.random.default_rng(11).normal(size=DIM)
    task = sqlite_store.get_task("task00")
    sqlite_store.add_embedding(task.id, make_result("semb", {"sentence": target}))  # same ids, new vector
    fresh = LibraryIndexes(sqlite_store, tmp_path / "idx")
    ids, sims = fresh.get(MODEL, "semb", "sentence").search(target, 1)
    assert fresh.rebuilds == 1 and ids.tolist() == [task.id] and sims[0] == pytest.approx(1.0, abs=1e-5)

    path.unlink()
    again = LibraryIndexes(sqlite_store, tmp_path / "idx")
    again.get(MODEL, "semb", "sentence")
    assert again.rebuilds == 1 and path.exists()


def test_for_target_names_both_models(sqlite_store: LibraryStore, tmp_path) -> None:
    _fill(sqlite_store, 3)
    indexes = LibraryIndexes(sqlite_store, tmp_path / "idx")
    with pytest.raises(
        LibraryError, match="library built with model test/encoder .*target embedded with bert"
    ):
        indexes.for_target("bert", "c" * 64, "semb", "sentence", DIM)
    with pytest.raises(LibraryError, match="no textemb embeddings"):
        indexes.for_target(MODEL, MODEL_HASH, "textemb", "text", DIM)


def test_sync_removes_orphan_files(sqlite_store: LibraryStore, tmp_path) -> None:
    _fill(sqlite_store, 2)
    indexes = LibraryIndexes(sqlite_store, tmp_path / "idx")
    assert indexes.sync() == 1 and len(list((tmp_path / "idx").glob("*.faiss"))) == 1
    for task in sqlite_store.list_tasks():
        sqlite_store.remove_task(task.id)
    assert indexes.sync() == 0 and not list((tmp_path / "idx").glob("*"))


def test_hnsw_recall_vs_exact() -> None:
    rng = np.random.default_rng(0)
    n, d, k = 5000, 64, 10
    data = rng.normal(size=(n, d)).astype(np.float32)
    queries = rng.normal(size=(100, d)).astype(np.float32)
    exact = VectorIndex(IndexInfo(MODEL, MODEL_HASH, "semb", "sentence", d))
    approx = VectorIndex(IndexInfo(MODEL, MODEL_HASH, "semb", "sentence", d, kind="hnsw"))
    ids = np.arange(n, dtype=np.int64)
    exact.add(ids, data)
    approx.add(ids, data)
    hits = 0
    for q in queries:
        truth = set(exact.search(q, k)[0].tolist())
        found, sims = approx.search(q, k)
        hits += len(truth & set(found.tolist()))
        assert np.all(np.diff(sims) <= 1e-6)  # inner products, best first
    assert hits / (k * len(queries)) >= 0.99


def test_hnsw_remove_and_persist(tmp_path) -> None:
    rng = np.random.default_rng(4)
    data = rng.normal(size=(200, DIM)).astype(np.float32)
    index = _index("hnsw")
    index.add(np.arange(200), data)
    assert index.remove([0, 1]) == 2  # HNSW cannot delete in place: rebuilt without them
    assert index.ntotal == 198 and 0 not in index.search(data[0], 198)[0].tolist()
    loaded = VectorIndex.load(index.save(tmp_path))
    assert loaded.info.kind == "hnsw"
    np.testing.assert_array_equal(loaded.search(data[5], 5)[0], index.search(data[5], 5)[0])


def test_centred_similarity_is_cosine_after_removing_the_library_mean(sqlite_store: LibraryStore, tmp_path) -> None:
    vectors = _fill(sqlite_store, 12)
    indexes = LibraryIndexes(sqlite_store, tmp_path / "idx", similarity="centred")
    index = indexes.get(MODEL, "semb", "sentence")
    ids = sorted(vectors)
    units = np.stack([vectors[i] / np.linalg.norm(vectors[i]) for i in ids])
    centre = units.mean(axis=0)
    np.testing.assert_allclose(index.info.centre, centre, atol=1e-6)
    query = np.random.default_rng(3).normal(size=DIM)
    expected = _cosine(units - centre, query / np.linalg.norm(query) - centre)
    found, sims = index.search(query, len(ids))
    assert found.tolist() == [ids[j] for j in np.argsort(-expected)]
    np.testing.assert_allclose(sims, np.sort(expected)[::-1], atol=1e-5)

    # The centre and the choice survive a reload; asking for plain cosine rebuilds the index.
    again = LibraryIndexes(sqlite_store, tmp_path / "idx", similarity="centred")
    assert again.get(MODEL, "semb", "sentence").info.centre == index.info.centre and again.rebuilds == 0
    cosine = LibraryIndexes(sqlite_store, tmp_path / "idx", similarity="cosine")
    plain = cosine.get(MODEL, "semb", "sentence")
    assert cosine.rebuilds == 1 and plain.info.centre is None
    np.testing.assert_allclose(plain.search(query, len(ids))[1], np.sort(_cosine(units, query))[::-1], atol=1e-5)

    # A library change moves the centre with it.
    sqlite_store.remove_task("task00")
    moved = indexes.get(MODEL, "semb", "sentence")
    np.testing.assert_allclose(moved.info.centre, units[1:].mean(axis=0), atol=1e-6)


def test_centring_stops_a_hub_from_being_everybodys_nearest_source(sqlite_store: LibraryStore, tmp_path) -> None:
    """Every vector is a large shared direction c + a direction it shares with its twin (weight 1)
    + a private one (weight 2); the hub is c alone. By cosine the hub is nearer to every query
    than the query's twin (the private parts weigh more than the shared one); centred on the
    library's mean, the twin is nearest."""
    n, dim = 24, 96  # a library of about the shipped one's size (30)
    eye = np.eye(dim)
    common = np.random.default_rng(5).normal(size=dim) * 4
    twins = {}
    for k in range(n):
        task = sqlite_store.add_task(f"t{k}", "classification", num_train=10, data_hash=data_hash(f"t{k}"))
        vector = common + eye[k] + 2 * eye[n + k]
        sqlite_store.add_embedding(task.id, make_result("semb", {"sentence": vector}))
        twins[k] = task.id
    hub = sqlite_store.add_task("hub", "classification", num_train=10, data_hash=data_hash("hub"))
    sqlite_store.add_embedding(hub.id, make_result("semb", {"sentence": common}))
    for similarity, nearest_is_hub in (("cosine", True), ("centred", False)):
        index = LibraryIndexes(sqlite_store, tmp_path / similarity, similarity=similarity).get(MODEL, "semb", "sentence")
        for k in range(n):
            found, _ = index.search(common + eye[k] + 2 * eye[2 * n + k], 1)
            assert found[0] == (hub.id if nearest_is_hub else twins[k]), (similarity, k)


def test_a_vector_at_the_library_mean_is_similar_to_nothing(sqlite_store: LibraryStore, tmp_path) -> None:
    for name in ("a", "b"):
        task = sqlite_store.add_task(name, "classification", num_train=10, data_hash=data_hash(name))
        sqlite_store.add_embedding(task.id, make_result("semb", {"sentence": np.ones(DIM)}))
    index = LibraryIndexes(sqlite_store, tmp_path / "idx", similarity="centred").get(MODEL, "semb", "sentence")
    ids, sims = index.search(np.ones(DIM), 2)
    assert len(ids) == 2 and np.all(sims == 0)
