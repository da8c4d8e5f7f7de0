"""Near-duplicate groups among embeddings, and near-duplicates of one set inside another (contamination).

Two rows are near-duplicates when the inner product of their L2-normalised embeddings (their cosine) is at least
`threshold`; a group is a connected component of that relation (a ~ b and b ~ c put a, b, c in one group even when
a and c are further apart). This is clip-retrieval's result deduplication (`clip_back.py`, `get_non_uniques`:
faiss `IndexFlatIP.range_search` at 0.94, then connected components, keeping the first of each), applied to a
whole collection. Pairs come from an exact blocked matrix product for small sets and from faiss's range search
(the same exact inner products, multi-threaded, in bounded memory) for large ones; components from union-find.

The cost is exact all-pairs: N^2 * D multiply-adds (1M x 512-d: ~5e14, hours on a CPU), so a collection of
millions is better deduplicated per shard or by clip-retrieval-style hashing; a few hundred thousand is minutes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

DEFAULT_THRESHOLD = 0.94  # clip-retrieval's clip_back get_non_uniques default
EXACT_MAX_ROWS = 20_000  # up to here numpy's blocked product is as fast as faiss and needs no faiss
BLOCK_ROWS = 2048  # rows per block: a (2048, N) float32 similarity block is 8 KiB * N

Method = Literal["auto", "exact", "faiss"]


def _check_embeddings(embeddings: np.ndarray, what: str = "embeddings") -> np.ndarray:
    array = np.asarray(embeddings)
    if array.ndim != 2:
        raise ValueError(f"{what}: expected a 2-D (N, D) array, got shape {array.shape}")
    array = np.ascontiguousarray(array, dtype=np.float32)
    if array.size and not np.isfinite(array).all():
        raise ValueError(f"{what}: holds NaN or inf values; rebuild the embeddings")
    return array


def _check_threshold(threshold: float) -> float:
    if not -1.0 <= float(threshold) <= 1.0:
        raise ValueError(f"threshold must be a cosine similarity between -1 and 1, got {threshold}")
    return float(threshold)


def _blocks(n: int, step: int, progress: bool):
    """Block starts over n rows, with a tqdm bar (rows compared) on stderr when `progress`."""
    from tqdm import tqdm

    with tqdm(total=n, desc="comparing", unit="rows", disable=not progress) as bar:
        for start in range(0, n, step):
            yield start
            bar.update(min(step, n - start))


def _pairs_exact(queries: np.ndarray, corpus: np.ndarray, threshold: float, same: bool, progress: bool):
    """(query rows, corpus rows, scores) with score >= threshold, block by block (numpy)."""
    found_q, found_c, found_s = [], [], []
    for start in _blocks(queries.shape[0], BLOCK_ROWS, progress):
        block = queries[start : start + BLOCK_ROWS] @ corpus.T  # (b, M)
        rows, cols = np.nonzero(block >= threshold)
        if same:  # each unordered pair once, no self pairs
            keep = cols > rows + start
            rows, cols = rows[keep], cols[keep]
        found_q.append(rows + start)
        found_c.append(cols)
        found_s.append(block[rows, cols])
    return _concat(found_q, found_c, found_s)


def _pairs_faiss(queries: np.ndarray, corpus: np.ndarray, threshold: float, same: bool, progress: bool):
    """The same pairs from faiss's exact IndexFlatIP range search (multi-threaded, bounded memory)."""
    try:
        import faiss
    except ImportError as exc:  # pragma: no cover - faiss-cpu is in the search extra
        raise ImportError("deduplicating more than 20,000 rows needs faiss: pip install 'clipforge[search]'") from exc
    index = faiss.IndexFlatIP(corpus.shape[1])
    index.add(corpus)
    found_q, found_c, found_s = [], [], []
    step = 16 * BLOCK_ROWS
    for start in _blocks(queries.shape[0], step, progress):
        # faiss's range search keeps scores > radius (strictly): step the radius one float below the threshold.
        radius = float(np.nextafter(np.float32(threshold), np.float32(-2)))
        lims, scores, ids = index.range_search(queries[start : start + step], radius)
        rows = np.repeat(np.arange(lims.size - 1, dtype=np.int64), np.diff(lims.astype(np.int64))) + start
        keep = scores >= threshold
        if same:
            keep &= ids > rows
        found_q.append(rows[keep])
        found_c.append(ids[keep].astype(np.int64))
        found_s.append(scores[keep])
    return _concat(found_q, found_c, found_s)


def _concat(q: list, c: list, s: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not q:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    return np.concatenate(q).astype(np.int64), np.concatenate(c).astype(np.int64), np.concatenate(s).astype(np.float32)


def similar_pairs(
    queries: np.ndarray,
    corpus: np.ndarray | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    method: Method = "auto",
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All (i, j, cosine) with cosine(queries[i], corpus[j]) >= threshold: (i (P,), j (P,), scores (P,)).

    With `corpus=None` the pairs are within `queries`, each unordered pair once (i < j), no self pairs. Rows are
    compared by inner product, which is the cosine for L2-normalised rows (what an INDEX_DIR holds).
    """
    threshold = _check_threshold(threshold)
    queries = _check_embeddings(queries, "queries" if corpus is not None else "embeddings")
    same = corpus is None
    corpus = queries if same else _check_embeddings(corpus, "corpus")
    if queries.shape[0] == 0 or corpus.shape[0] == 0:
        return _concat([], [], [])
    if queries.shape[1] != corpus.shape[1]:
        raise ValueError(f"queries are {queries.shape[1]}-d but the corpus is {corpus.shape[1]}-d: different models?")
    if method not in ("auto", "exact", "faiss"):
        raise ValueError(f"method must be auto, exact or faiss, not {method!r}")
    exact = method == "exact" or (method == "auto" and max(queries.shape[0], corpus.shape[0]) <= EXACT_MAX_ROWS)
    return (_pairs_exact if exact else _pairs_faiss)(queries, corpus, threshold, same, progress)


def connected_components(n: int, left: np.ndarray, right: np.ndarray) -> list[list[int]]:
    """Groups of >= 2 nodes among 0..n-1 joined by the edges (left[k], right[k]) (union-find with path halving).

    Each group is sorted, and groups are ordered by their smallest member, so the output is deterministic.
    """
    parent = np.arange(n, dtype=np.int64)

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = int(parent[x])
        return x

    for a, b in zip(left.tolist(), right.tolist()):
        root_a, root_b = find(a), find(b)
        if root_a != root_b:
            parent[max(root_a, root_b)] = min(root_a, root_b)  # the smallest member is the root
    members: dict[int, list[int]] = {}
    for node in sorted(set(left.tolist()) | set(right.tolist())):
        members.setdefault(find(node), []).append(node)
    return sorted((group for group in members.values() if len(group) > 1), key=lambda group: group[0])


def near_duplicate_groups(
    embeddings: np.ndarray, threshold: float = DEFAULT_THRESHOLD, *, method: Method = "auto", progress: bool = False
) -> list[list[int]]:
    """Groups (row positions, each sorted, ordered by first member) of rows whose cosine links them at >= threshold.

    Rows in no group have no near-duplicate. Keep `group[0]` of each to deduplicate in collection order; to keep the
    best-ranked of search results, pass them in rank order (the Searcher does).
    """
    embeddings = _check_embeddings(embeddings)
    left, right, _ = similar_pairs(embeddings, None, threshold, method, progress)
    return connected_components(embeddings.shape[0], left, right)


def duplicate_positions(groups: list[list[int]]) -> set[int]:
    """Every member of every group but its first: what deduplication drops."""
    return {member for group in groups for member in group[1:]}


@dataclass(frozen=True)
class Match:
    """A query row (e.g. an evaluation image) with a near-duplicate in the corpus (e.g. the training set)."""

    query: int
    corpus: int
    similarity: float


def cross_matches(
    queries: np.ndarray,
    corpus: np.ndarray,
    threshold: float = DEFAULT_THRESHOLD,
    *,
    method: Method = "auto",
    progress: bool = False,
) -> list[Match]:
    """Every (query row, corpus row) pair at cosine >= threshold, sorted by query row then by similarity (best
    first): the contamination report of an evaluation set (queries) against training data (corpus)."""
    q, c, s = similar_pairs(queries, corpus, threshold, method, progress)
    order = np.lexsort((-s, q))
    return [Match(int(q[i]), int(c[i]), float(s[i])) for i in order]
