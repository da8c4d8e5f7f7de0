"""Qdrant as the backend for collections that outgrow one machine: export an INDEX_DIR, search it like a VectorIndex.

`export_to_qdrant` copies the live rows of an INDEX_DIR (ids = the same global row numbers, payload = the row's
metadata) into a Qdrant collection; `QdrantIndex` answers `search(queries, k, allowed_ids)` with the same shapes
and conventions as `search.index.VectorIndex`, so the Searcher and the service take either. The location is
":memory:" (tests), a folder (qdrant-client's local in-process mode), or an http(s) URL of a Qdrant server or
cluster (with `api_key` where it needs one): the same code talks to all three. Qdrant shards, replicates and
persists the collection itself; clipforge does not run a sharded server of its own.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from clipforge.search.layout import IndexLayout
from clipforge.search.store import MetadataStore

DEFAULT_COLLECTION = "clipforge"


def connect(location: str, api_key: str | None = None):
    """A QdrantClient for ":memory:", a local folder, or an http(s):// URL."""
    from qdrant_client import QdrantClient

    if location == ":memory:":
        return QdrantClient(location=":memory:")
    if location.startswith(("http://", "https://")):
        return QdrantClient(url=location, api_key=api_key)
    return QdrantClient(path=os.fspath(location))


def _client(client_or_location, api_key: str | None):
    if isinstance(client_or_location, (str, os.PathLike)):
        return connect(os.fspath(client_or_location), api_key)
    return client_or_location


def export_to_qdrant(
    root: str | os.PathLike,
    client_or_location,
    collection: str = DEFAULT_COLLECTION,
    *,
    modality: str = "image",
    batch_size: int = 1024,
    recreate: bool = False,
    api_key: str | None = None,
    progress: bool = False,
) -> int:
    """Upload the INDEX_DIR's live `modality` rows (dot-product distance; rows are L2-normalised, so this is cosine)
    with their metadata as payload; the number of points written. An existing collection is refused unless
    `recreate` (which replaces it), so that two collections are never mixed into one."""
    from qdrant_client import models

    client = _client(client_or_location, api_key)
    layout = IndexLayout(root)
    vectors = layout.load_embeddings(modality, mmap=True)  # (N, D) float32
    live = np.flatnonzero(layout.live_mask(modality))
    store = MetadataStore(root) if layout.metadata_paths() else None
    if client.collection_exists(collection):
        if not recreate:
            raise ValueError(f"Qdrant collection {collection!r} exists; pass recreate=True to replace it")
        client.delete_collection(collection)
    client.create_collection(
        collection, vectors_config=models.VectorParams(size=int(vectors.shape[1]), distance=models.Distance.DOT)
    )
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=int(live.size), desc=f"exporting to Qdrant {collection}", unit="vec", disable=None)
    for start in range(0, live.size, batch_size):
        ids = live[start : start + batch_size]
        payloads = store.get(ids) if store is not None else [{} for _ in ids]
        client.upsert(
            collection,
            points=models.Batch(
                ids=[int(i) for i in ids],
                vectors=np.asarray(vectors[ids], dtype=np.float32).tolist(),
                payloads=payloads,
            ),
            wait=True,
        )
        if bar is not None:
            bar.update(ids.size)
    if bar is not None:
        bar.close()
    return int(live.size)


class QdrantIndex:
    """A Qdrant collection searched like a VectorIndex: `search(queries (Q, D), k, allowed_ids)` -> scores (Q, k)
    float32, ids (Q, k) int64 (-1 / -inf where fewer)."""

    def __init__(self, client_or_location, collection: str = DEFAULT_COLLECTION, api_key: str | None = None) -> None:
        self.client = _client(client_or_location, api_key)
        self.collection = collection
        if not self.client.collection_exists(collection):
            raise ValueError(f"no Qdrant collection {collection!r}; export one with export_to_qdrant")
        params = self.client.get_collection(collection).config.params.vectors
        self.dim = int(params.size)

    @property
    def ntotal(self) -> int:
        """Points in the collection."""
        return int(self.client.count(self.collection, exact=True).count)

    def search(
        self, queries: np.ndarray, k: int, allowed_ids: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-`k` points by dot product per query; `allowed_ids` restricts them (Qdrant's has_id filter)."""
        from qdrant_client import models

        queries = np.asarray(queries, dtype=np.float32)
        if queries.ndim == 1:
            queries = queries[None, :]
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"queries must be (Q, {self.dim}) vectors, got shape {tuple(queries.shape)}")
        if int(k) < 1:
            raise ValueError(f"k must be at least 1, not {k}")
        k = int(k)
        scores = np.full((queries.shape[0], k), -np.inf, np.float32)
        ids = np.full((queries.shape[0], k), -1, np.int64)
        query_filter = None
        if allowed_ids is not None:
            allowed = np.unique(np.asarray(allowed_ids, dtype=np.int64))
            allowed = allowed[allowed >= 0]
            if allowed.size == 0:
                return scores, ids
            query_filter = models.Filter(must=[models.HasIdCondition(has_id=[int(i) for i in allowed])])
        requests = [
            models.QueryRequest(query=q.tolist(), limit=k, filter=query_filter, with_payload=False) for q in queries
        ]
        for row, response in enumerate(self.client.query_batch_points(self.collection, requests=requests)):
            for column, point in enumerate(response.points):
                ids[row, column] = int(point.id)
                scores[row, column] = float(point.score)
        return scores, ids

    def reconstruct(self, ids: np.ndarray) -> np.ndarray:
        """(n, D) float32 stored vectors of points `ids` (KeyError naming the ones the collection lacks)."""
        ids = [int(i) for i in np.asarray(ids, dtype=np.int64).reshape(-1)]
        points = {int(p.id): p.vector for p in self.client.retrieve(self.collection, ids=ids, with_vectors=True)}
        missing = [i for i in ids if i not in points]
        if missing:
            raise KeyError(f"Qdrant collection {self.collection!r} has no points {missing[:5]}")
        return np.asarray([points[i] for i in ids], dtype=np.float32).reshape(len(ids), self.dim)

    def payloads(self, ids: np.ndarray) -> list[dict[str, Any]]:
        """The metadata payloads of points `ids`, in order ({} for a point without one)."""
        ids = [int(i) for i in np.asarray(ids, dtype=np.int64).reshape(-1)]
        found = {int(p.id): p.payload or {} for p in self.client.retrieve(self.collection, ids=ids, with_payload=True)}
        return [found.get(i, {}) for i in ids]
