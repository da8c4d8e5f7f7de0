"""Query an INDEX_DIR: a query (rclip syntax, terms, or a vector) -> ranked results with their metadata.

`Searcher(root)` opens the INDEX_DIR lazily: the faiss index of a modality on its first search, the metadata store
on the first lookup, and the model recorded in info.json only when a query has a text or image term (id: and emb:
queries, and vectors, never load it). A model passed in overrides the recorded one; one whose embedding size is not
the index's is refused naming both, since its vectors would not be comparable.

Result deduplication follows clip-retrieval's back end (`clip_back.py`: search, reconstruct the results'
embeddings, connected components at cosine >= 0.94, drop all but the first of each): the best-ranked member of
each group stays. clip-back then returns fewer results than asked; here the search over-fetches and fetches
again, larger, until `k` distinct results are found or the index has no more.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .dedup import DEFAULT_THRESHOLD, duplicate_positions, near_duplicate_groups
from .layout import IndexLayout, IndexLayoutError
from .query import QueryEncoder, QueryError, Term, embed_terms, parse_query

log = logging.getLogger(__name__)

MAX_K = 10_000  # results per query: a page shows tens, a script that needs more should page or export
MAX_FETCH = 50_000  # rows fetched for deduplication at most (connected components over them stay sub-second)


@dataclass(frozen=True)
class SearchResult:
    """One result: the row's global id, its score (cosine with the query) and its metadata columns."""

    id: int
    score: float
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """{"id", "score", **metadata} (what `clipforge search --json` prints)."""
        return {"id": self.id, "score": self.score, **self.metadata}


class ModelEncoder:
    """A CLIP model as a QueryEncoder: L2-normalised (n, D) float32 text and image embeddings on `device`."""

    def __init__(self, model: Any, device: Any = "cpu") -> None:
        from ..factory import get_preprocess, get_tokenizer

        self.model = model
        self.device = device
        self.tokenizer = get_tokenizer(model)
        self.preprocess = get_preprocess(model)
        self.dim = int(model.embed_dim)

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        """(n, D) unit embeddings of `texts`, tokenised with the model's tokenizer."""
        import torch

        with torch.no_grad():
            tokens = self.tokenizer(texts).to(self.device)
            return self.model.encode_text(tokens, normalize=True).float().cpu().numpy()

    def encode_images(self, images: list) -> np.ndarray:
        """(n, D) unit embeddings of PIL images, through the model's own eval preprocessing."""
        import torch

        with torch.no_grad():
            batch = torch.stack([self.preprocess(image) for image in images]).to(self.device)  # (n, 3, S, S)
            dtype = next(self.model.parameters()).dtype
            return self.model.encode_image(batch.to(dtype), normalize=True).float().cpu().numpy()


def _load_recorded_model(layout: IndexLayout, record: Any, device: Any):
    """The model info.json names ({"name", "pretrained", "weights_hash"}), checked against the recorded hash."""
    from ..weights.loading import create_model, load_model

    if not isinstance(record, dict) or not (record.get("name") or record.get("pretrained")):
        raise IndexLayoutError(
            f"{layout.info_path}: no model recorded, so text and image queries cannot be embedded; pass a model "
            "(--model/--pretrained) or query by id: / emb:"
        )
    name, pretrained = record.get("name"), record.get("pretrained")
    if name is None:
        model = load_model(pretrained, device=device)
    else:
        model = create_model(name, pretrained=pretrained, device=device)
    expected = record.get("weights_hash")
    if expected:
        from ..eval.features import weights_hash

        found = weights_hash(model)
        if found != expected:
            what = f"{name or ''} {pretrained or '(random weights)'}".strip()
            raise IndexLayoutError(
                f"{layout.root}: the model recorded in info.json ({what}) now loads with other weights (hash "
                f"{found}, the index was built with {expected}); pass the model the index was built with "
                "(--model/--pretrained), or rebuild the index"
            )
    model.eval()
    return model


class Searcher:
    """Search one INDEX_DIR (see the module docstring). Not thread-safe while it opens things lazily: a service
    calls `warm_up()` first, after which searches only read."""

    def __init__(self, root: str | Path, model: Any = None, device: Any = "cpu") -> None:
        self.layout = IndexLayout(root)
        self.layout.require_built()  # an unfinished build is told apart from a folder that is no INDEX_DIR
        self.info = self.layout.read_info()
        dim = self.info.get("dim")
        if not isinstance(dim, int) or dim <= 0:
            raise IndexLayoutError(f"{self.layout.info_path}: 'dim' is {dim!r}, not a positive integer; rebuild")
        self.dim: int = dim
        self.device = device
        self._encoder: QueryEncoder | None = None
        self._indexes: dict[str, Any] = {}
        self._store: Any = None
        if model is not None:
            self._encoder = self._as_encoder(model)

    def _as_encoder(self, model: Any) -> QueryEncoder:
        encoder = model if hasattr(model, "encode_texts") else ModelEncoder(model, self.device)
        dim = getattr(encoder, "dim", None)
        if dim is not None and int(dim) != self.dim:
            recorded = self.info.get("model") or {}
            name = recorded.get("name") or recorded.get("pretrained") or "?"
            given = getattr(getattr(model, "config", None), "name", None) or type(model).__name__
            raise ValueError(
                f"the model given ({given}) embeds into {dim} dimensions but {self.layout.root} holds {self.dim}-d "
                f"embeddings (made with {name}); use the model the index was built with"
            )
        return encoder

    # lazily opened parts
    @property
    def encoder(self) -> QueryEncoder:
        """The query encoder: the model given, else the one info.json records (loaded on first use)."""
        if self._encoder is None:
            log.info("loading the model recorded in %s", self.layout.info_path)
            self._encoder = self._as_encoder(_load_recorded_model(self.layout, self.info.get("model"), self.device))
        return self._encoder

    def index(self, modality: str = "image"):
        """The VectorIndex of `modality` (opened memory-mapped on first use)."""
        if modality not in self._indexes:
            from .index import open_index

            if not self.layout.index_path(modality).exists():
                have = [m for m in ("image", "text") if self.layout.index_path(m).exists()]
                raise IndexLayoutError(
                    f"{self.layout.root}: no {modality} index ({self.layout.index_path(modality).name}); "
                    + (f"search modality {' or '.join(have)}" if have else "build it with `clipforge index build`")
                )
            self._indexes[modality] = open_index(self.layout.root, modality)
        return self._indexes[modality]

    @property
    def store(self):
        """The MetadataStore (opened on first use)."""
        if self._store is None:
            from .store import MetadataStore

            self._store = MetadataStore(self.layout.root)
        return self._store

    def warm_up(self, modalities: Sequence[str] = ("image",), model: bool = False) -> None:
        """Open the indexes (and the metadata store, and the model when `model`) now rather than on first use."""
        for modality in modalities:
            self.index(modality)
        _ = self.store
        if model:
            _ = self.encoder

    # queries
    def rows(self, ids: np.ndarray) -> np.ndarray:
        """(n, D) float32 stored image embeddings of rows `ids` (for `id:` terms); QueryError for an unknown or
        deleted id."""
        ids = np.asarray(ids, dtype=np.int64)
        modality = "image" if self.layout.shard_paths("image") else "text"
        index = self.index(modality)
        deleted = set(index.deleted.tolist())
        for row in ids.tolist():
            if not 0 <= row < index.ntotal:
                raise QueryError(f"id:{row}: the index holds rows 0..{index.ntotal - 1}")
            if row in deleted:
                raise QueryError(f"id:{row}: that row was removed by `clipforge index update`")
        return index.reconstruct(ids)

    def embed(self, query: str | Sequence[str] | Sequence[Term] | np.ndarray) -> np.ndarray:
        """The unit (D,) float32 query vector of a query string, words, terms, or a vector (normalised here)."""
        if isinstance(query, np.ndarray):
            vector = np.asarray(query, dtype=np.float32).reshape(-1)
            if vector.shape[0] != self.dim:
                raise QueryError(f"query vector of {vector.shape[0]} dimensions; the index holds {self.dim}-d vectors")
            norm = float(np.linalg.norm(vector))
            if not np.isfinite(norm) or norm == 0.0:
                raise QueryError("the query vector is zero or not finite, so it has no direction to search")
            return vector / np.float32(norm)
        terms = list(query) if not isinstance(query, str) and query and isinstance(query[0], Term) else None
        terms = terms if terms is not None else parse_query(query)  # type: ignore[arg-type]
        return embed_terms(terms, lambda: self.encoder, self.rows, dim=self.dim)

    def search(
        self,
        query: str | Sequence[str] | Sequence[Term] | np.ndarray,
        k: int = 10,
        filters: dict[str, Any] | None = None,
        deduplicate: bool = False,
        modality: str = "image",
        *,
        threshold: float = DEFAULT_THRESHOLD,
    ) -> list[SearchResult]:
        """The `k` best rows of `modality` for `query`, best first, with their metadata.

        filters: {column: value or [values]} (MetadataStore.ids_where): only matching rows are searched.
        deduplicate: drop results within `threshold` cosine of a better-ranked result (see the module docstring).
        """
        if not isinstance(k, int) or not 1 <= k <= MAX_K:
            raise ValueError(f"k must be an integer from 1 to {MAX_K}, got {k!r}")
        vector = self.embed(query)[None, :]  # (1, D)
        index = self.index(modality)
        allowed = None
        if filters:
            allowed = np.asarray(self.store.ids_where(filters), dtype=np.int64)
            if allowed.size == 0:
                return []
        available = index.ntotal if allowed is None else int(allowed.size)
        fetch = min(available, k if not deduplicate else max(2 * k, k + 20))
        while True:
            scores, ids = index.search(vector, fetch, allowed_ids=allowed)
            valid = ids[0] >= 0
            scores, ids = scores[0][valid], ids[0][valid]  # (n,), rank order
            keep = np.arange(ids.size)
            if deduplicate and ids.size > 1:
                dropped = duplicate_positions(near_duplicate_groups(index.reconstruct(ids), threshold))
                keep = np.array([i for i in range(ids.size) if i not in dropped], dtype=np.int64)
            exhausted = ids.size < fetch or fetch >= min(available, MAX_FETCH)
            if keep.size >= k or exhausted:
                break
            fetch = min(available, MAX_FETCH, fetch * 4)
        keep = keep[:k]
        metadata = self.store.get(ids[keep]) if keep.size else []
        return [
            SearchResult(int(ids[i]), float(scores[i]), dict(meta)) for i, meta in zip(keep.tolist(), metadata)
        ]
