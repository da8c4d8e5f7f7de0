"""One query, whatever API it came through: what to search with (text, image bytes, image URL, embedding, row id
or an rclip-syntax query string), in which index and modality, how many results, with which filters.

`run_query` runs in a worker thread (ConcurrencyLimiter.run): it embeds the query (the model only for text and
images), searches, and turns the library's errors into ApiErrors: a bad query is the client's mistake (4xx), never
a 500. Query strings may hold text and `id:` terms only: the rclip syntax also names server-side files (`./x.jpg`,
`emb:x.npy`) and URLs, which a client must never make the server open; images are sent as bytes (or as an
`image_url`, fetched only when the server allows it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ...image.loading import ImageLoadError, ImageTooLargeError, load_image
from ..layout import IndexLayoutError
from ..query import QueryError, fetch_url, parse_query
from ..searcher import SearchResult
from .config import ServiceConfig
from .errors import ApiError
from .indices import ServedIndex

QueryKind = Literal["text", "image", "url", "embedding", "id", "query"]
QUERY_TERMS = ("text", "id")  # term kinds a query string may hold over the network


@dataclass(frozen=True)
class Query:
    """What to search for (`kind`, `value`) and how: value is a str (text, URL, query string), bytes (an image),
    a list of floats (an embedding) or an int (a row id)."""

    kind: QueryKind
    value: Any
    k: int = 10
    modality: str = "image"
    filters: dict[str, str | list[str]] | None = None
    deduplicate: bool = False


def check_filters(served: ServedIndex, filters: Any, config: ServiceConfig) -> dict[str, str | list[str]] | None:
    """`filters` ({column: value or [values]}) checked against the index's columns and the limits."""
    if filters is None or filters == {}:
        return None
    if not isinstance(filters, dict):
        raise ApiError(400, "'filters' must be an object {column: value or [values]}")
    if len(filters) > config.max_filters:
        raise ApiError(400, f"{len(filters)} filter columns; at most {config.max_filters}")
    columns = served.columns
    clean: dict[str, str | list[str]] = {}
    for column, value in filters.items():
        if column not in columns:
            raise ApiError(400, f"no metadata column {column!r} in index {served.name!r}; its columns are {columns}")
        values = value if isinstance(value, list) else [value]
        if not values or len(values) > config.max_filter_values:
            raise ApiError(400, f"filter {column!r}: give 1 to {config.max_filter_values} values")
        for v in values:
            if not isinstance(v, (str, int, float)) or isinstance(v, bool) or len(str(v)) > config.max_query_chars:
                raise ApiError(400, f"filter {column!r}: values must be strings or numbers, got {v!r}"[:300])
        clean[column] = [str(v) for v in values] if isinstance(value, list) else str(value)
    return clean


def check_modality(served: ServedIndex, modality: Any) -> str:
    """'image' or 'text', and one this index has embeddings for; a 400 otherwise."""
    if modality not in ("image", "text"):
        raise ApiError(400, f"'modality' must be 'image' or 'text', got {modality!r}"[:300])
    if modality not in served.modalities:
        raise ApiError(400, f"index {served.name!r} has no {modality} index; search modality {served.modalities[0]}")
    return modality


def _decode_image(data: bytes, config: ServiceConfig, name: str):
    try:
        return load_image(data, name=name, max_pixels=config.max_pixels, max_bytes=config.max_upload_bytes)
    except ImageTooLargeError as exc:
        raise ApiError(413, str(exc)) from None
    except ImageLoadError as exc:
        raise ApiError(400, f"{exc}; send a JPEG, PNG, WebP, GIF, BMP or TIFF file's bytes") from None


def query_vector(served: ServedIndex, query: Query, config: ServiceConfig) -> np.ndarray | str | list:
    """What Searcher.search takes for `query`: a (D,) vector, or parsed terms of a query string."""
    if query.kind == "embedding":
        return np.asarray(query.value, dtype=np.float32)
    if query.kind == "id":
        served.check_id(query.value)
        return served.searcher.rows(np.array([query.value], dtype=np.int64))[0]
    if query.kind == "query":
        terms = parse_query(query.value)
        bad = [t for t in terms if t.kind not in QUERY_TERMS]
        if bad:
            raise ApiError(
                400,
                f"query term {bad[0].describe()!r} names a file or URL; over the API a query holds text and id:N "
                "terms only: send an image as 'image' (base64 of its bytes) or 'image_url'",
            )
        for term in terms:
            if term.kind == "id":
                served.check_id(int(term.value))
        if any(t.kind == "text" for t in terms):
            served.encoder()
        return terms
    if query.kind == "text":
        encoder = served.encoder()
        return np.asarray(encoder.encode_texts([query.value]), dtype=np.float32)[0]
    if query.kind == "url":
        if not query.value.startswith(("http://", "https://")):
            raise ApiError(400, f"image_url must be an http:// or https:// URL, got {query.value[:100]!r}")
        data = fetch_url(query.value, timeout=config.url_timeout_s, max_bytes=config.max_upload_bytes)
        image = _decode_image(data, config, query.value[:200])
    else:
        image = _decode_image(query.value, config, "uploaded image")
    encoder = served.encoder()
    return np.asarray(encoder.encode_images([image]), dtype=np.float32)[0]


def run_query(served: ServedIndex, query: Query, config: ServiceConfig) -> list[SearchResult]:
    """The results of `query` on `served` (runs in a worker thread); ApiError for every client mistake."""
    try:
        what = query_vector(served, query, config)
        return served.searcher.search(
            what, k=query.k, filters=query.filters, deduplicate=query.deduplicate, modality=query.modality
        )
    except ApiError:
        raise
    except QueryError as exc:
        raise ApiError(400, str(exc)) from None
    except (IndexLayoutError, ValueError, IndexError) as exc:
        raise ApiError(400, str(exc)) from None
