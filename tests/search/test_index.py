"""search.index: the index plan, exact and approximate indexes against brute force, filters, deletions, reopening
memory-mapped, and clear errors for broken index files."""

from __future__ import annotations

import os

import faiss
import numpy as np
import pytest
import torch

from clipforge.search import index as index_module
from clipforge.search.index import IndexFileError, build_index, open_index, plan_index
from clipforge.search.layout import IndexLayout
from support.indexdirs import clustered, make_index_dir
from support.tolerance import assert_close_rel


def _brute(vectors: np.ndarray, queries: np.ndarray, k: int, allowed: np.ndarray | None = None):
    """Exact top-k by numpy: (scores, ids) over `allowed` rows (all when None)."""
    ids = np.arange(len(vectors)) if allowed is None else np.asarray(allowed)
    scores = queries @ vectors[ids].T  # (Q, A)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, 1), ids[order]


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(np.intersect1d(f, t)) / truth.shape[1] for f, t in zip(found, truth)]))


@pytest.fixture(scope="module")
def collection() -> np.ndarray:
    return clustered(20_000, 64, seed=0)


def test_plan_follows_size_and_budget():
    assert plan_index(50_000, 512).factory == "Flat"
    assert plan_index(500_000, 512).factory == "IVF2048,Flat"  # 4 sqrt(n) = 2828 -> 2048; 1 GB fits 4 GiB
    big = plan_index(1_000_000, 512)
    assert (big.kind, big.factory, big.pq_m, big.train_rows) == ("ivfpq", "IVF4096,PQ128x8np", 128, 4096 * 64)
    assert big.estimated_bytes(1_000_000, 512) < 200e6
    tight = plan_index(1_000_000, 512, memory_budget_bytes=60_000_000)
    assert tight.pq_m == 32 and tight.estimated_bytes(1_000_000, 512) <= 60_000_000
    assert plan_index(500_000, 512, memory_budget_bytes=500_000_000).kind == "ivfpq"  # raw vectors do not fit
    assert plan_index(1_000_000, 512, mmap=False).factory == "HNSW32"  # autofaiss: HNSW when memory allows
    assert plan_index(1_000_000, 512, mmap=False, memory_budget_bytes=2_100_000_000).kind == "ivfpq"  # M < 8
    with pytest.raises(ValueError, match="raise memory_budget_bytes"):
        plan_index(1_000_000, 512, memory_budget_bytes=1_000_000)
    with pytest.raises(ValueError, match="at least 9,984 vectors"):
        plan_index(5000, 64, kind="ivfpq")
    with pytest.raises(ValueError, match="one of"):
        plan_index(10, 8, kind="lsh")


def test_exact_index_equals_numpy_brute_force(tmp_path):
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((3000, 32)).astype(np.float32)
    make_index_dir(tmp_path, vectors, shards=3)
    record = build_index(tmp_path, recall_sample=50)
    assert record["kind"] == "flat" and record["recall_at_10"] == 1.0
    queries = rng.standard_normal((20, 32)).astype(np.float32)
    scores, ids = open_index(tmp_path).search(queries, 10)
    want_scores, want_ids = _brute(vectors, queries, 10)
    np.testing.assert_array_equal(ids, want_ids)
    assert_close_rel(torch.from_numpy(scores), torch.from_numpy(want_scores.astype(np.float32)), 1e-5, "scores")
    # k beyond the collection: -1 ids and -inf scores fill the rest
    scores, ids = open_index(tmp_path).search(queries[:2], 3005)
    assert (ids[:, 3000:] == -1).all() and np.isneginf(scores[:, 3000:]).all() and (ids[:, :3000] >= 0).all()


@pytest.mark.parametrize(("kind", "bar"), [("ivfflat", 0.93), ("ivfpq", 0.92), ("hnsw", 0.95)])
def test_approximate_recall_against_exact(tmp_path, collection, kind, bar):
    """Bars at 20k x 64-d clustered rows, measured here: IVF-Flat 0.988, IVF-PQ (re-ranked) 0.978, HNSW 0.999."""
    make_index_dir(tmp_path, collection)
    record = build_index(tmp_path, kind=kind, recall_sample=300)
    info = IndexLayout(tmp_path).read_info()["index"]["image"]
    assert info == record
    assert record["recall_at_10"] >= bar and record["recall_sample"] == 300
    assert record["memory_bytes"] == os.path.getsize(tmp_path / "image.index") and record["build_seconds"] > 0
    expected_param = "efSearch" if kind == "hnsw" else "nprobe"
    assert record["params"][expected_param] >= 1
    queries = collection[np.random.default_rng(7).choice(len(collection), 200, replace=False)]  # fresh sample
    _, ids = open_index(tmp_path).search(queries, 10)
    assert _recall(ids, _brute(collection, queries, 10)[1]) >= bar


def test_mmap_reopen_gives_the_same_results(tmp_path, collection):
    make_index_dir(tmp_path, collection[:5000])
    build_index(tmp_path, kind="ivfflat", recall_sample=100)
    queries = collection[:10]
    mapped = open_index(tmp_path, mmap=True).search(queries, 10)
    loaded = open_index(tmp_path, mmap=False).search(queries, 10)
    np.testing.assert_array_equal(mapped[1], loaded[1])
    assert open_index(tmp_path).ntotal == 5000 and open_index(tmp_path).dim == 64


@pytest.mark.parametrize("kind", ["flat", "ivfflat", "ivfpq", "hnsw"])
def test_filtered_search_equals_brute_force_with_the_filter(tmp_path, collection, kind, monkeypatch):
    vectors = collection[:12_000]
    make_index_dir(tmp_path, vectors)
    build_index(tmp_path, kind=kind, recall_sample=100)
    index = open_index(tmp_path)
    rng = np.random.default_rng(3)
    queries = vectors[rng.choice(len(vectors), 8, replace=False)]
    allowed = rng.choice(len(vectors), 300, replace=False)
    scores, ids = index.search(queries, 10, allowed_ids=allowed)  # small set: exact on those rows (or faiss, flat)
    want_scores, want_ids = _brute(vectors, queries, 10, np.sort(allowed))
    np.testing.assert_array_equal(ids, want_ids)
    assert_close_rel(torch.from_numpy(scores), torch.from_numpy(want_scores), 1e-5, "filtered scores")
    if kind in ("flat", "ivfflat"):  # the faiss IDSelector path, all lists probed: exact as well
        monkeypatch.setattr(index_module, "EXACT_SUBSET_MAX", 0)
        if kind == "ivfflat":
            faiss.extract_index_ivf(index.index).nprobe = faiss.extract_index_ivf(index.index).nlist
        np.testing.assert_array_equal(index.search(queries, 10, allowed_ids=allowed)[1], want_ids)
    monkeypatch.setattr(index_module, "EXACT_SUBSET_MAX", 0)
    _, ids = index.search(queries, 10, allowed_ids=allowed)
    assert np.isin(ids[ids >= 0], allowed).all()
    _, none = index.search(queries, 5, allowed_ids=np.array([], dtype=np.int64))
    assert (none == -1).all()


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_deleted_rows_are_never_returned(tmp_path, collection, kind):
    vectors = collection[:12_000]
    layout = make_index_dir(tmp_path, vectors)
    build_index(tmp_path, kind=kind, recall_sample=100)
    queries = vectors[:5]
    _, before = open_index(tmp_path).search(queries, 10)
    deleted = np.unique(before[:, :5])  # the best hits, the queries themselves among them
    np.save(layout.deleted_path, deleted)
    index = open_index(tmp_path)  # deleted after the build: excluded at search time
    _, after = index.search(queries, 10)
    assert not np.isin(after, deleted).any() and (after >= 0).all()
    _, filtered = index.search(queries, 10, allowed_ids=np.arange(100))
    assert not np.isin(filtered, deleted).any()
    record = build_index(tmp_path, kind=kind, recall_sample=100)  # rebuilt: recall measured over live rows
    assert record["count"] == 12_000 and record["recall_at_10"] >= 0.9
    assert not np.isin(open_index(tmp_path).search(queries, 10)[1], deleted).any()


def test_reconstruct_returns_the_stored_rows(tmp_path, collection):
    make_index_dir(tmp_path, collection[:4000], shards=3, dtype=np.float16)
    build_index(tmp_path, kind="ivfflat", recall_sample=50)
    index = open_index(tmp_path)
    ids = np.array([3999, 0, 1500, 2700, 1500])
    np.testing.assert_array_equal(index.reconstruct(ids), collection[ids].astype(np.float16).astype(np.float32))
    with pytest.raises(IndexError, match=r"\[0, 4000\)"):
        index.reconstruct(np.array([4000]))


def test_build_writes_atomically_and_tolerates_bad_queries(tmp_path, collection):
    make_index_dir(tmp_path, collection[:2000])
    build_index(tmp_path, recall_sample=20, progress=True)
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
    index = open_index(tmp_path)
    with pytest.raises(ValueError, match=r"\(Q, 64\)"):
        index.search(np.zeros((2, 63), np.float32), 5)
    with pytest.raises(ValueError, match="k must be at least 1"):
        index.search(collection[:1], 0)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "fifo", "missing"])
def test_broken_index_file_gives_a_clear_error(tmp_path, collection, damage):
    make_index_dir(tmp_path, collection[:3000])
    build_index(tmp_path, kind="ivfflat", recall_sample=20)
    path = tmp_path / "image.index"
    data = path.read_bytes()
    path.unlink()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x00garbage" * 100)
    elif damage == "fifo":
        os.mkfifo(path)
    with pytest.raises(IndexFileError, match="image.index") as caught:
        open_index(tmp_path)
    assert "rebuild" in str(caught.value) or "build it" in str(caught.value)


def test_stale_index_is_refused(tmp_path, collection):
    layout = make_index_dir(tmp_path, collection[:3000])
    build_index(tmp_path, recall_sample=20)
    np.save(layout.emb_path("image", 2), collection[3000:3100])  # index update appended a shard
    with pytest.raises(IndexFileError, match="rebuild the index"):
        open_index(tmp_path)
