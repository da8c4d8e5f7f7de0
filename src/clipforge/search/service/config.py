"""The settings of one search service: limits, access, and what the clip-back API does with what it cannot do.

Every limit has a safe default, so `create_app(indices)` alone is a service one can expose on a laptop: uploads,
decoded pixels, query text, result counts and metadata lookups are capped; work in flight is bounded (more waits
in a short queue, then gets 503 with Retry-After); images are fetched from URLs only when `allow_image_url` says so.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...image.loading import DEFAULT_MAX_PIXELS


@dataclass(frozen=True)
class ServiceConfig:
    """Settings of `create_app` (the `clipforge serve` options set them).

    token: when set, every endpoint but /health needs `Authorization: Bearer TOKEN` (compared in constant time).
    max_upload_bytes: an uploaded (base64-decoded) or URL-fetched query image; the request body may be 4/3 of it
        (base64) plus `max_json_bytes`.
    max_json_bytes: a request body without an image (an embedding of 4096 floats is ~90 kB of JSON).
    max_pixels: decoded width * height of a query image (decompression bombs are refused before decoding).
    max_query_chars: a text query; max_k: results per query; max_ids: ids per /metadata lookup.
    max_filters / max_filter_values: metadata filter columns per query, values per column.
    max_concurrency: searches running at once (each in a worker thread); max_queue: requests waiting for a slot,
        at most `queue_timeout_s` seconds; beyond either, 503 with `Retry-After`.
    allow_image_url: fetch `image_url` queries (clip-back) over the network; off by default (a server that fetches
        any URL it is sent can be made to probe its own network). url_timeout_s bounds a fetch.
    strict_clipback: refuse (422) clip-back requests asking for filters clipforge does not have (safety model,
        violence detector, aesthetic re-weighting, multilingual CLIP) instead of ignoring them with a header.
    clipback_images: put each result's image, re-encoded as base64 JPEG, in clip-back answers as clip-back does
        (only files under the index's image roots).
    image_roots: folders (besides each index's own source folder) whose images /items/{id}/image may serve.
    max_image_file_bytes: an image file served or inlined.
    preload_model: load each index's query model at start (a first text query then waits for nothing).
    cors_origins: web origins whose pages may call the API from a browser (clip-retrieval's clip-front served from
        elsewhere, say); "*" allows any. None by default: only same-origin pages (the service's own) may.
    device: where query models run.
    """

    token: str | None = None
    max_upload_bytes: int = 16 * 2**20
    max_json_bytes: int = 1 * 2**20
    max_pixels: int = min(DEFAULT_MAX_PIXELS, 50_000_000)
    max_query_chars: int = 1_000
    max_k: int = 1_000
    max_ids: int = 1_000
    max_filters: int = 16
    max_filter_values: int = 1_000
    max_concurrency: int = 8
    max_queue: int = 64
    queue_timeout_s: float = 5.0
    allow_image_url: bool = False
    url_timeout_s: float = 10.0
    strict_clipback: bool = False
    clipback_images: bool = True
    image_roots: tuple[str, ...] = ()
    max_image_file_bytes: int = 64 * 2**20
    preload_model: bool = True
    device: str = "cpu"
    cors_origins: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        positive = (
            "max_upload_bytes", "max_json_bytes", "max_pixels", "max_query_chars", "max_k", "max_ids",
            "max_filters", "max_filter_values", "max_concurrency", "max_image_file_bytes",
        )  # fmt: skip
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ServiceConfig.{name} must be a positive integer, got {value!r}")
        if isinstance(self.max_queue, bool) or not isinstance(self.max_queue, int) or self.max_queue < 0:
            raise ValueError(f"ServiceConfig.max_queue must be an integer >= 0, got {self.max_queue!r}")
        for name in ("queue_timeout_s", "url_timeout_s"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
                raise ValueError(f"ServiceConfig.{name} must be a positive number of seconds, got {value!r}")
        if self.token is not None and (not isinstance(self.token, str) or len(self.token) < 8):
            raise ValueError("ServiceConfig.token must be a string of at least 8 characters (or None for no token)")
        for name in ("image_roots", "cors_origins"):
            if isinstance(getattr(self, name), str):
                raise ValueError(f"ServiceConfig.{name} must be a tuple of strings, not one string")

    @property
    def max_body_bytes(self) -> int:
        """The largest request body read: a base64 image of `max_upload_bytes` plus the rest of the JSON."""
        return (self.max_upload_bytes * 4) // 3 + 4 + self.max_json_bytes
