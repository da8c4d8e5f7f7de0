"""search.dedup: near-duplicate groups (connected components above a cosine) and cross-set matches."""

from __future__ import annotations

import numpy as np
import pytest

from clipforge.search.dedup import (
    connected_components,
    cross_matches,
    duplicate_positions,
    near_duplicate_groups,
    similar_pairs,
)

D = 32


def distinct(n: int, seed: int = 0) -> np.ndarray:
    """n unit rows at pairwise cosine ~0 (orthonormal when n <= D): no two near-duplicates."""
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((D, D)))
    return q[:n].astype(np.float32)


def at_cosine(base: np.ndarray, other: np.ndarray, cosine: float) -> np.ndarray:
    """A unit vector at exactly `cosine` from unit `base`, bent towards unit `other` (orthogonal to base)."""
    return (cosine * base + np.sqrt(1 - cosine**2) * other).astype(np.float32)


def planted() -> tuple[np.ndarray, list[list[int]]]:
    rows = distinct(12)
    e = list(rows)
    e.append(rows[0].copy())  # 12: an exact copy of 0
    e.append(at_cosine(rows[3], rows[11], 0.97))  # 13: a near copy of 3 at cosine 0.97
    e.append(at_cosine(rows[5], rows[10], 0.90))  # 14: at 0.90 from 5: NOT a duplicate at 0.94
    return np.stack(e), [[0, 12], [3, 13]]


@pytest.mark.parametrize("method", ["exact", "faiss"])
def test_planted_duplicates_are_found_and_nothing_else(method):
    embeddings, expected = planted()
    assert near_duplicate_groups(embeddings, 0.94, method=method) == expected
    assert near_duplicate_groups(embeddings, 0.85, method=method) == expected + [[5, 14]]
    assert near_duplicate_groups(distinct(D), 0.94, method=method) == []


def test_threshold_is_inclusive_and_exact_equals_faiss():
    base, other = distinct(2)
    pair = np.stack([base, at_cosine(base, other, 0.95)])
    score = float(pair[0] @ pair[1])
    for method in ("exact", "faiss"):
        assert near_duplicate_groups(pair, score, method=method) == [[0, 1]]
        assert near_duplicate_groups(pair, float(np.nextafter(np.float32(score), np.float32(2))), method=method) == []
    rng = np.random.default_rng(1)
    noisy = rng.standard_normal((300, 8)).astype(np.float32)
    noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
    exact = similar_pairs(noisy, threshold=0.6, method="exact")
    faiss_pairs = similar_pairs(noisy, threshold=0.6, method="faiss")
    assert set(zip(*exact[:2])) == set(zip(*faiss_pairs[:2])) and len(exact[0]) > 10


def test_chains_join_one_group_and_keep_drops_all_but_first():
    # a ~ b (0.96), b ~ c (0.96), a and c at ~0.84: one group through b, as clip-retrieval's components
    a, x, y = distinct(3)
    b = at_cosine(a, x, 0.96)
    c = at_cosine(b, (y - (y @ b) * b) / np.linalg.norm(y - (y @ b) * b), 0.96)
    assert a @ c < 0.94
    groups = near_duplicate_groups(np.stack([c, x, a, b]), 0.94)
    assert groups == [[0, 2, 3]]
    assert duplicate_positions(groups) == {2, 3}


def test_connected_components_union_find():
    left, right = np.array([5, 1, 7, 2]), np.array([6, 2, 6, 3])
    assert connected_components(9, left, right) == [[1, 2, 3], [5, 6, 7]]
    assert connected_components(3, np.zeros(0, np.int64), np.zeros(0, np.int64)) == []


def test_cross_matches_find_eval_rows_in_training_rows():
    train = distinct(10)
    evaluation = np.stack([train[4].copy(), distinct(12)[11], at_cosine(train[7], train[2], 0.95)])
    matches = cross_matches(evaluation, train, 0.94)
    assert [(m.query, m.corpus) for m in matches] == [(0, 4), (2, 7)]
    assert [m.similarity for m in matches] == pytest.approx([1.0, 0.95], abs=1e-5)
    by_faiss = cross_matches(evaluation, train, 0.94, method="faiss")
    assert [(m.query, m.corpus) for m in by_faiss] == [(0, 4), (2, 7)]
    assert [m.similarity for m in by_faiss] == pytest.approx([m.similarity for m in matches], abs=1e-5)

def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="2-D"):
        near_duplicate_groups(np.zeros(4))
    with pytest.raises(ValueError, match="NaN or inf"):
        near_duplicate_groups(np.array([[np.nan, 1.0]]))
    with pytest.raises(ValueError, match="between -1 and 1"):
        near_duplicate_groups(distinct(2), 1.5)
    with pytest.raises(ValueError, match="different models"):
        cross_matches(distinct(2), np.zeros((2, 3), np.float32))
    assert near_duplicate_groups(np.zeros((0, 4), np.float32)) == []
