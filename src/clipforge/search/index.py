"""The faiss index of an INDEX_DIR: choose its kind, build it, measure its recall, open it memory-mapped, search it.

Choosing the index (`plan_index`) follows autofaiss's `get_optimal_index_keys_v2` with its "memory-mappable" rule,
because an INDEX_DIR is opened memory-mapped (a service starts at once and shares pages with other processes):

- fewer than `EXACT_MAX_VECTORS` rows: exact inner product (`Flat`): a brute-force scan of 100k x 512 float32 rows
  takes a few milliseconds, and exact results need no tuning;
- up to `IVF_FLAT_MAX_VECTORS` rows, when the raw vectors fit the memory budget: `IVF{nlist},Flat` (exact scores
  within the probed lists);
- beyond, or when they do not fit: `IVF{nlist},PQ{m}x8np` with the largest `m` (bytes per vector, at most one per
  4 dimensions) whose codes fit the budget; candidates (`RERANK_FACTOR` x k, at least 40) are re-scored exactly
  from the memory-mapped embedding shards, which lifts recall@10 from PQ's ~0.7 to ~0.98 for a few hundred row
  reads. Departures from autofaiss, measured here: no OPQ rotation (its training took minutes and gained
  little once candidates are re-ranked) and no polysemous training (`np`; it took 80% of the build time);
- `HNSW{M}` (autofaiss's first choice when memory allows) only when asked for (`kind="hnsw"`) or when the index
  is not to be memory-mapped (`mmap=False`): its graph is read into memory whole.

nlist is autofaiss's 4 * sqrt(n) rounded to a power of two (autofaiss jumps to 16384 lists from 1M rows; at 4096
lists 1M rows train in minutes on a laptop's cores, and the lists stay short enough for millisecond queries). The
coarse quantizer and PQ are trained on a random sample (64 rows per list, at least the 9984 PQ's 256 centroids
need), and the search parameter (nprobe for IVF, efSearch for HNSW) is the smallest that reaches
`TARGET_RECALL` (or comes within 0.01 of the best reachable) on a tuning sample of collection rows. recall@10 is
then measured against exact search on *another* sample of rows used as queries, and written with the plan, the
build time and the index's size to `info.json` under `index.{modality}`.

Ids are global row numbers (layout.py). Deleted rows (`deleted.npy`), and in the text index the rows without a
caption (`no_caption.npy`, zero vectors), stay in the index (no id map, so ids stay row
numbers and every index type takes search parameters unchanged) and are excluded at search time by an id
selector, as are rows deleted after the index was built.
"""

from __future__ import annotations

import math
import os
import stat
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from clipforge.atomic import atomic_open
from clipforge.search.layout import IndexLayout, IndexLayoutError, load_shard

KINDS = ("auto", "flat", "ivfflat", "ivfpq", "hnsw")
EXACT_MAX_VECTORS = 100_000  # below: brute force (a few ms per query at 512-d) beats any approximate index
IVF_FLAT_MAX_VECTORS = 1_000_000  # autofaiss's ivf_flat_threshold: above, quantize
DEFAULT_MEMORY_BUDGET_BYTES = 4 * 2**30  # a laptop's share; pass memory_budget_bytes for more or less
PQ_BYTES = (128, 64, 48, 32, 24, 16, 8, 4)  # candidate PQ code sizes, most accurate first (autofaiss from 256)
TRAIN_ROWS_PER_LIST = 64  # faiss warns below 39 rows per centroid; more costs training time for little gain
PQ_MIN_TRAIN_ROWS = 256 * 39  # 8-bit PQ trains 256 centroids per sub-quantizer
TARGET_RECALL = 0.95
RERANK_FACTOR = 4  # IVF-PQ: re-score max(4k, 40) candidates exactly
EXACT_SUBSET_MAX = 20_000  # a filter allowing fewer ids is scored exactly on those rows (approximate indexes)
_ID_BYTES = 8  # inverted lists store an int64 id per vector


class IndexFileError(ValueError):
    """An index file is missing, unreadable, corrupted or does not match its INDEX_DIR; the message names the file
    and says how to rebuild it."""


@dataclass(frozen=True)
class IndexPlan:
    """Which faiss index to build: its factory string and the parameters it was derived from."""

    kind: str  # flat | ivfflat | ivfpq | hnsw
    factory: str  # faiss.index_factory string
    nlist: int = 0  # IVF lists
    pq_m: int = 0  # PQ bytes per vector
    hnsw_m: int = 0  # HNSW links per node
    train_rows: int = 0  # rows sampled to train (0: no training)

    def estimated_bytes(self, n: int, dim: int) -> int:
        """Memory the built index needs for `n` vectors of `dim` (the file size, within a few percent)."""
        if self.kind == "flat":
            return n * dim * 4
        if self.kind == "ivfflat":
            return n * (dim * 4 + _ID_BYTES) + self.nlist * dim * 4
        if self.kind == "ivfpq":
            return n * (self.pq_m + _ID_BYTES) + self.nlist * dim * 4 + dim * dim * 4 + 256 * dim * 4
        return n * (dim * 4 + self.hnsw_m * 2 * 4 + 8)  # hnsw: vectors + level-0 links (+ upper levels, ~8 bytes)


def _nlist_for(n: int) -> int:
    """autofaiss's 4 * sqrt(n) as a power of two, at most n / 39 (faiss's minimum rows per centroid)."""
    nlist = 2 ** round(math.log2(max(4 * math.sqrt(n), 1)))
    return int(max(1, min(nlist, n // 39)))


def _train_rows(n: int, nlist: int, pq: bool) -> int:
    return int(min(n, max(nlist * TRAIN_ROWS_PER_LIST, PQ_MIN_TRAIN_ROWS if pq else 0)))


def _ivfpq_plan(n: int, dim: int, budget: int | None) -> IndexPlan:
    nlist = _nlist_for(n)
    fitting = []
    for m in PQ_BYTES:
        if 4 * m > dim or dim % m:
            continue
        plan = IndexPlan("ivfpq", f"IVF{nlist},PQ{m}x8np", nlist=nlist, pq_m=m,
                         train_rows=_train_rows(n, nlist, pq=True))  # 4+ dims per sub-quantizer
        if budget is None or plan.estimated_bytes(n, dim) <= budget:
            fitting.append(plan)
    if not fitting:
        smallest = min((m for m in PQ_BYTES if 4 * m <= dim and dim % m == 0), default=None)
        if smallest is None:
            raise ValueError(f"IVF-PQ needs a dimension divisible by one of {PQ_BYTES} (at least 4x it), not {dim}")
        need = IndexPlan("ivfpq", "", nlist=nlist, pq_m=smallest).estimated_bytes(n, dim)
        raise ValueError(
            f"no index of {n:,} x {dim}-d vectors fits a memory budget of {budget:,} bytes (the smallest, IVF-PQ with "
            f"{smallest} bytes per vector, needs about {need:,}); raise memory_budget_bytes"
        )
    return fitting[0]


def plan_index(
    n: int, dim: int, *, kind: str = "auto", memory_budget_bytes: int | None = None, mmap: bool = True
) -> IndexPlan:
    """The index to build for `n` vectors of `dim` (see the module docstring for the rules and where they come from).

    `memory_budget_bytes` (default `DEFAULT_MEMORY_BUDGET_BYTES`) bounds the index's size for kind="auto" and the PQ
    code size for kind="ivfpq"; `mmap=False` lets "auto" pick HNSW, which cannot be memory-mapped."""
    if kind not in KINDS:
        raise ValueError(f"index kind must be one of {KINDS}, not {kind!r}")
    if n < 1 or dim < 1:
        raise ValueError(f"cannot index {n} vectors of dimension {dim}; embed some images first")
    budget = DEFAULT_MEMORY_BUDGET_BYTES if memory_budget_bytes is None else int(memory_budget_bytes)
    if budget <= 0:
        raise ValueError(f"memory_budget_bytes must be positive, not {memory_budget_bytes}")
    flat = IndexPlan("flat", "Flat")
    if kind == "flat" or (kind == "auto" and n < EXACT_MAX_VECTORS):
        return flat
    if kind == "hnsw" or (kind == "auto" and not mmap):
        links = int(math.floor((budget / (4 * n) - dim) / 2))  # autofaiss: HNSW when M >= 8 fits the budget
        if kind == "hnsw" or links >= 8:
            m = int(min(max(links, 8), 32))
            return IndexPlan("hnsw", f"HNSW{m}", hnsw_m=m)
    nlist = _nlist_for(n)
    ivf_flat = IndexPlan("ivfflat", f"IVF{nlist},Flat", nlist=nlist, train_rows=_train_rows(n, nlist, pq=False))
    if kind == "ivfflat":
        return ivf_flat
    if kind == "auto" and n < IVF_FLAT_MAX_VECTORS and ivf_flat.estimated_bytes(n, dim) <= budget:
        return ivf_flat
    if n < PQ_MIN_TRAIN_ROWS:
        raise ValueError(f"IVF-PQ needs at least {PQ_MIN_TRAIN_ROWS:,} vectors to train, not {n:,}; use kind='auto'")
    return _ivfpq_plan(n, dim, budget)


def _search_param_name(kind: str) -> str | None:
    return {"ivfflat": "nprobe", "ivfpq": "nprobe", "hnsw": "efSearch"}.get(kind)


def _candidates(plan: IndexPlan) -> list[int]:
    if plan.kind == "hnsw":
        return [16, 32, 64, 128, 256, 512]
    if plan.kind in ("ivfflat", "ivfpq"):
        return [p for p in (1, 2, 4, 8, 16, 32, 64, 128, 256) if p <= plan.nlist] or [plan.nlist]
    return []


def _set_search_param(index: faiss.Index, kind: str, value: int) -> None:
    if kind in ("ivfflat", "ivfpq"):
        faiss.extract_index_ivf(index).nprobe = int(value)
    elif kind == "hnsw":
        faiss.downcast_index(index).hnsw.efSearch = int(value)


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean over queries of |found top-k ∩ true top-k| / k (ids; -1 never matches)."""
    k = truth.shape[1]
    hits = sum(len(np.intersect1d(f[f >= 0], t)) for f, t in zip(found, truth))
    return hits / (k * len(truth))


def _chunks(n: int, size: int):
    for start in range(0, n, size):
        yield start, min(n, start + size)


def _write_index(index: faiss.Index, path: Path) -> int:
    """Serialise `index` to `path` atomically (streamed, no second copy in memory); the bytes written."""
    with atomic_open(path) as handle:
        faiss.write_index(index, faiss.PyCallbackIOWriter(handle.write))
    return path.stat().st_size


def _progress(total: int, enabled: bool, desc: str):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="vec", unit_scale=True, disable=None)


def build_index(
    root: str | os.PathLike,
    modality: str = "image",
    *,
    kind: str = "auto",
    memory_budget_bytes: int | None = None,
    recall_sample: int = 1000,
    mmap: bool = True,
    progress: bool = False,
    seed: int = 0,
) -> dict[str, Any]:
    """Build INDEX_DIR/{modality}.index from the embedding shards and record it in info.json; returns that record.

    The record (`info.json` `index.{modality}`): `kind`, `factory`, `params` (nlist, pq_m, hnsw_m, train_rows and
    the tuned nprobe / efSearch), `build_seconds`, `memory_bytes` (the index file, which is what a memory-mapped
    open pages in), `recall_at_10` against exact search on `recall_sample` rows drawn from the collection (1.0 for
    an exact index, measured all the same), `recall_sample`, `count` and `dim` (checked when opening)."""
    layout = IndexLayout(root)
    start = time.perf_counter()
    shards = layout.shard_paths(modality)
    if not shards:
        raise IndexLayoutError(f"{layout.root}: no {modality} embedding shards; build the index first")
    vectors = ShardRows.open(shards)  # memory-mapped, read shard by shard: memory holds the index and one chunk
    n, dim = vectors.shape
    live = layout.live_mask(modality)  # (N,) not deleted and, for text, captioned
    if live.size != n:
        raise IndexLayoutError(
            f"{layout.root}: the {modality} shards hold {n} rows but their headers say {live.size}; rebuild the index"
        )
    live_ids = np.flatnonzero(live).astype(np.int64)
    if live_ids.size == 0:
        why = "deleted or without a caption" if modality == "text" else "deleted"
        raise IndexLayoutError(f"{layout.root}: every {modality} row is {why}; there is nothing to index")
    plan = plan_index(live_ids.size, dim, kind=kind, memory_budget_bytes=memory_budget_bytes, mmap=mmap)
    rng = np.random.default_rng(seed)
    index = faiss.index_factory(dim, plan.factory, faiss.METRIC_INNER_PRODUCT)
    if plan.train_rows:
        sample = np.sort(rng.choice(live_ids, size=plan.train_rows, replace=False))
        index.train(vectors.take(sample))  # (train_rows, D)
    bar = _progress(n, progress, f"indexing {modality}")
    for shard in vectors.shards:  # all rows, deleted included, so that ids are row numbers
        for lo, hi in _chunks(shard.shape[0], 65_536):
            index.add(np.ascontiguousarray(shard[lo:hi], dtype=np.float32))
            if bar is not None:
                bar.update(hi - lo)
    if bar is not None:
        bar.close()

    excluded = np.flatnonzero(~live).astype(np.int64)  # deleted rows (and uncaptioned ones for text)
    vector_index = VectorIndex(index, kind=plan.kind, deleted=excluded, embeddings=vectors)
    sample_size = int(min(recall_sample, live_ids.size))
    params: dict[str, Any] = {k: v for k, v in asdict(plan).items() if k not in ("kind", "factory")}
    recall = None
    if sample_size:
        queries_ids = rng.choice(live_ids, size=min(2 * sample_size, live_ids.size), replace=False)
        tune_ids = queries_ids[sample_size:] if queries_ids.size > sample_size else queries_ids
        eval_ids = queries_ids[:sample_size]
        truth = _exact_top(vectors, live_ids, np.concatenate([tune_ids, eval_ids]), 10)
        tune_truth, eval_truth = truth[: tune_ids.size], truth[tune_ids.size :]
        name = _search_param_name(plan.kind)
        if name is not None:
            best = _tune(vector_index, plan, vectors.take(tune_ids), tune_truth)
            params[name] = best
            _set_search_param(index, plan.kind, best)
        _, found = vector_index.search(vectors.take(eval_ids), 10)
        recall = _recall(found, eval_truth)
    else:
        name = _search_param_name(plan.kind)
        if name is not None:
            params[name] = _candidates(plan)[-1]
            _set_search_param(index, plan.kind, params[name])
    path = layout.index_path(modality)
    memory = _write_index(index, path)
    record = {
        "kind": plan.kind,
        "factory": plan.factory,
        "params": params,
        "build_seconds": round(time.perf_counter() - start, 3),
        "memory_bytes": int(memory),
        "recall_at_10": recall,
        "recall_sample": sample_size,
        "count": int(n),
        "dim": int(dim),
    }
    layout.write_info({"index": {modality: record}})
    return record


def _exact_top(vectors: ShardRows, live_ids: np.ndarray, query_ids: np.ndarray, k: int) -> np.ndarray:
    """(Q, k) global ids of the exact top-k inner products of rows `query_ids` over the live rows, computed chunk by
    chunk of the shards (no copy of the whole collection) and merged."""
    queries = vectors.take(query_ids)  # (Q, D)
    live = np.zeros(vectors.shape[0], dtype=bool)
    live[live_ids] = True
    best_scores = np.full((len(queries), 0), -np.inf, np.float32)
    best_ids = np.zeros((len(queries), 0), np.int64)
    for shard, offset in zip(vectors.shards, vectors.offsets):
        for lo, hi in _chunks(shard.shape[0], 262_144):
            keep = np.flatnonzero(live[offset + lo : offset + hi])  # (C_live,) rows of this chunk
            if keep.size == 0:
                continue
            base = np.ascontiguousarray(shard[lo:hi][keep], dtype=np.float32)
            scores, rows = faiss.knn(queries, base, min(k, keep.size), metric=faiss.METRIC_INNER_PRODUCT)
            best_scores = np.concatenate([best_scores, scores], axis=1)
            best_ids = np.concatenate([best_ids, offset + lo + keep[rows]], axis=1)
            order = np.argsort(-best_scores, axis=1, kind="stable")[:, :k]
            best_scores = np.take_along_axis(best_scores, order, 1)
            best_ids = np.take_along_axis(best_ids, order, 1)
    return best_ids


def _tune(vector_index: VectorIndex, plan: IndexPlan, queries: np.ndarray, truth: np.ndarray) -> int:
    """The smallest search parameter reaching TARGET_RECALL, or within 0.01 of the best candidate's recall."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    measured = []
    for value in _candidates(plan):
        _set_search_param(vector_index.index, plan.kind, value)
        measured.append((value, _recall(vector_index.search(queries, truth.shape[1])[1], truth)))
        if measured[-1][1] >= TARGET_RECALL:
            return value
    bar = max(r for _, r in measured) - 0.01
    return next(value for value, r in measured if r >= bar)


class ShardRows:
    """Rows of an INDEX_DIR's embedding shards by global id, gathered from the memory-mapped shards: re-ranking and
    filtered search read a few hundred rows, never the whole (possibly float16) collection."""

    def __init__(self, shards: list[np.ndarray]) -> None:
        if not shards:
            raise ValueError("ShardRows needs at least one shard")
        dims = {a.shape[1] if a.ndim == 2 else None for a in shards}
        if len(dims) != 1 or None in dims:
            raise IndexLayoutError(f"embedding shards are not all (n, D) with one D: {sorted(map(str, dims))}")
        self.shards = shards
        self.offsets = np.cumsum([0] + [a.shape[0] for a in shards])  # (S + 1,) first global id of each shard
        self.shape = (int(self.offsets[-1]), int(shards[0].shape[1]))

    @classmethod
    def open(cls, paths: list[Path]) -> ShardRows:
        """Memory-map the .npy shards at `paths` (in shard order)."""
        return cls([load_shard(path) for path in paths])

    def take(self, ids: np.ndarray) -> np.ndarray:
        """(n, D) float32 rows `ids` (any order, repeats allowed; every id in [0, N))."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        out = np.empty((ids.size, self.shape[1]), dtype=np.float32)
        shard_of = np.searchsorted(self.offsets, ids, side="right") - 1
        for shard in np.unique(shard_of):
            where = shard_of == shard
            out[where] = self.shards[shard][ids[where] - self.offsets[shard]]
        return out


def _take(rows: np.ndarray | ShardRows, ids: np.ndarray) -> np.ndarray:
    if isinstance(rows, ShardRows):
        return rows.take(ids)
    return np.ascontiguousarray(rows[np.asarray(ids, dtype=np.int64)], dtype=np.float32)


class VectorIndex:
    """A faiss index over an INDEX_DIR's rows (ids = global row numbers) with filtered, deletion-aware search.

    `embeddings` (the INDEX_DIR's rows: an array or memory-mapped `ShardRows`) serve `reconstruct` exactly, re-rank
    IVF-PQ candidates and score small filtered sets exactly; without them `reconstruct` asks faiss (exact for Flat,
    decoded codes for IVF-PQ) and IVF-PQ scores are PQ approximations."""

    def __init__(
        self,
        index: faiss.Index,
        *,
        kind: str,
        deleted: np.ndarray | None = None,
        embeddings: np.ndarray | ShardRows | None = None,
        path: Path | None = None,
    ) -> None:
        self.index = index
        self.kind = kind
        self.path = path
        self.deleted = np.zeros(0, np.int64) if deleted is None else np.unique(np.asarray(deleted, np.int64))
        self.embeddings = embeddings

    @property
    def ntotal(self) -> int:
        """Rows in the index (deleted ones included: they are never returned)."""
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        """Vector dimension."""
        return int(self.index.d)

    def _check_queries(self, queries: np.ndarray) -> np.ndarray:
        queries = np.asarray(queries)
        if queries.ndim == 1:
            queries = queries[None, :]
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"queries must be (Q, {self.dim}) vectors, got shape {tuple(queries.shape)}")
        if not np.issubdtype(queries.dtype, np.floating):
            raise ValueError(f"queries must be floating point, got {queries.dtype}")
        return np.ascontiguousarray(queries, dtype=np.float32)

    def _params(self, selector) -> faiss.SearchParameters:
        if self.kind in ("ivfflat", "ivfpq"):
            params = faiss.SearchParametersIVF()
            params.nprobe = faiss.extract_index_ivf(self.index).nprobe
        elif self.kind == "hnsw":
            params = faiss.SearchParametersHNSW()
            params.efSearch = faiss.downcast_index(self.index).hnsw.efSearch
        else:
            params = faiss.SearchParameters()
        params.sel = selector
        return params

    def search(
        self, queries: np.ndarray, k: int, allowed_ids: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-`k` rows by inner product for each query (Q, D): scores (Q, k) float32 and ids (Q, k) int64, best
        first; ids -1 (score -inf) where fewer than k rows qualify. `allowed_ids` restricts results to those ids;
        deleted rows are never returned."""
        queries = self._check_queries(queries)
        if int(k) < 1:
            raise ValueError(f"k must be at least 1, not {k}")
        k = int(k)
        n_queries = queries.shape[0]
        if allowed_ids is not None:
            allowed = np.unique(np.asarray(allowed_ids, dtype=np.int64))
            allowed = allowed[(allowed >= 0) & (allowed < self.ntotal)]
            if self.deleted.size:
                allowed = np.setdiff1d(allowed, self.deleted, assume_unique=True)
            if allowed.size == 0:
                return np.full((n_queries, k), -np.inf, np.float32), np.full((n_queries, k), -1, np.int64)
            if self.kind != "flat" and allowed.size <= EXACT_SUBSET_MAX and self.embeddings is not None:
                return self._exact_subset(queries, k, allowed)
            selector = faiss.IDSelectorBatch(allowed)
        elif self.deleted.size:
            inner = faiss.IDSelectorBatch(self.deleted)
            selector = faiss.IDSelectorNot(inner)
            selector.inner = inner  # keep the wrapped selector alive as long as the outer one
        else:
            selector = None
        rerank = self.kind == "ivfpq" and self.embeddings is not None
        k_search = min(max(RERANK_FACTOR * k, 40) if rerank else k, self.ntotal)
        if selector is None:
            scores, ids = self.index.search(queries, k_search)
        else:
            scores, ids = self.index.search(queries, k_search, params=self._params(selector))
        if rerank:
            scores, ids = self._rerank(queries, ids, k)
        return _pad(scores, ids, k)

    def _rerank(self, queries: np.ndarray, candidates: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact scores of the (Q, C) candidate ids from the stored rows; the best k of each row."""
        valid = candidates >= 0
        rows = _take(self.embeddings, np.where(valid, candidates, 0)).reshape(*candidates.shape, -1)  # (Q, C, D)
        scores = np.einsum("qcd,qd->qc", rows, queries)
        scores = np.where(valid, scores, -np.inf).astype(np.float32)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(scores, order, 1), np.take_along_axis(candidates, order, 1)

    def _exact_subset(self, queries: np.ndarray, k: int, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact scores over the allowed rows: an approximate index misses most of a small allowed set."""
        rows = _take(self.embeddings, allowed)  # (A, D)
        scores = queries @ rows.T  # (Q, A)
        top = min(k, allowed.size)
        part = np.argpartition(-scores, top - 1, axis=1)[:, :top]
        part_scores = np.take_along_axis(scores, part, axis=1)
        order = np.argsort(-part_scores, axis=1, kind="stable")
        return _pad(np.take_along_axis(part_scores, order, 1), allowed[np.take_along_axis(part, order, 1)], k)

    def reconstruct(self, ids: np.ndarray) -> np.ndarray:
        """(n, D) float32 vectors of rows `ids` (IndexError naming the range when one is out of it)."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        bad = ids[(ids < 0) | (ids >= self.ntotal)]
        if bad.size:
            raise IndexError(f"ids must be in [0, {self.ntotal}), got {bad[:5].tolist()}")
        if self.embeddings is not None:
            return _take(self.embeddings, ids)
        if not ids.size:
            return np.zeros((0, self.dim), np.float32)
        return np.stack([self.index.reconstruct(int(i)) for i in ids])


def _pad(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(Q, k) results with -1 ids / -inf scores for missing ones (faiss marks them -1 / -FLT_MAX)."""
    ids = ids.astype(np.int64, copy=False)
    scores = np.where(ids >= 0, scores, -np.inf).astype(np.float32)
    if ids.shape[1] < k:
        extra = k - ids.shape[1]
        ids = np.pad(ids, ((0, 0), (0, extra)), constant_values=-1)
        scores = np.pad(scores, ((0, 0), (0, extra)), constant_values=-np.inf)
    return scores, ids


def _read_faiss(path: Path, kind: str, mmap: bool) -> faiss.Index:
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise IndexFileError(
            f"{path}: no index; build it with `clipforge index build` or clipforge.search.index.build_index"
        ) from None
    if not stat.S_ISREG(mode):
        raise IndexFileError(f"{path}: not a regular file; remove it and rebuild the index")
    # IO_FLAG_MMAP maps IVF inverted lists; IO_FLAG_MMAP_IFC maps flat codes (Flat, and HNSW's vector storage: its
    # links are read into memory). The two cannot be combined (faiss refuses IVF files then). READ_ONLY: the
    # mapping is never written through.
    flags = faiss.IO_FLAG_READ_ONLY
    if mmap:
        flags |= faiss.IO_FLAG_MMAP if kind in ("ivfflat", "ivfpq") else faiss.IO_FLAG_MMAP_IFC
    try:
        return faiss.read_index(str(path), flags)
    except (RuntimeError, MemoryError) as exc:
        reason = str(exc).strip().splitlines()
        raise IndexFileError(
            f"{path}: not a readable faiss index (truncated or corrupted: {reason[-1] if reason else 'unreadable'}); "
            f"run `clipforge index update {path.parent}` to rebuild it (or clipforge.search.index.build_index)"
        ) from exc


def open_index(root: str | os.PathLike, modality: str = "image", mmap: bool = True) -> VectorIndex:
    """Open INDEX_DIR/{modality}.index (memory-mapped unless `mmap=False`), with the search parameter tuned at
    build time and the current `deleted.npy`; IndexFileError (naming the file) when it is missing, corrupted, or
    does not match the INDEX_DIR's embeddings."""
    layout = IndexLayout(root)
    path = layout.index_path(modality)
    record = layout.read_info().get("index", {}).get(modality)
    if not isinstance(record, dict) or record.get("kind") not in KINDS[1:]:
        raise IndexFileError(f"{layout.info_path}: no index.{modality} record for {path}; rebuild the index")
    index = _read_faiss(path, record["kind"], mmap)
    if index.ntotal != record.get("count") or index.d != record.get("dim"):
        raise IndexFileError(
            f"{path}: holds {index.ntotal} x {index.d}-d vectors but info.json records {record.get('count')} x "
            f"{record.get('dim')}-d; the file is stale or from another INDEX_DIR: rebuild the index"
        )
    name = _search_param_name(record["kind"])
    if name is not None and isinstance(record.get("params", {}).get(name), int):
        _set_search_param(index, record["kind"], record["params"][name])
    shards = layout.shard_paths(modality)
    rows = ShardRows.open(shards) if shards else None
    if rows is not None and rows.shape != (index.ntotal, index.d):
        raise IndexFileError(
            f"{path}: holds {index.ntotal} x {index.d}-d vectors but the {modality} shards hold {rows.shape[0]} x "
            f"{rows.shape[1]}-d: an `index update` is unfinished or still running; wait for it, or run `clipforge "
            f"index update {layout.root}` to finish it and rebuild the index"
        )
    # Rows never returned: deleted ones, and for text the rows without a caption (zero vectors; layout.live_mask).
    excluded = layout.deleted_ids() if modality == "image" else np.flatnonzero(~layout.live_mask(modality))
    return VectorIndex(index, kind=record["kind"], deleted=excluded, embeddings=rows, path=path)
