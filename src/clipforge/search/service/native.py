"""clipforge's own JSON API: /search, /indices, /items/{id}, /items/{id}/image, /health, /metrics.

    GET  /search?q=red+car&k=10&index=NAME&where=colour=red&dedup=true&modality=image
         q: text and id:N terms in rclip's syntax ("2:cat - id:17"); where: COLUMN=VALUE, repeatable (values of one
         column are alternatives, columns must all match)
    POST /search  {"text" | "image" (base64 of the file's bytes) | "embedding" ([D floats]) | "id" (a row) |
                   "query" (as q), "k", "index", "modality", "filters" ({column: value or [values]}), "deduplicate"}
         -> {"index", "modality", "k", "took_ms", "results": [{"id", "score", "metadata": {...}, "image"?}]}
    GET  /indices -> {"indices": [{"name", "rows", "live", "dim", "modalities", "columns", "model", ...}]}
    GET  /items/{id}?index=NAME -> {"id", "index", "metadata": {...}}
    GET  /items/{id}/image?index=NAME -> the image file (only from the index's image roots; see `indices`)
    GET  /health -> {"status": "ok", "indices": [...]} (no token needed)
    GET  /metrics -> Prometheus text

`image` in a result is the URL of its image file on this server, present when the index serves image files.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import PlainTextResponse, Response

from ...safeio import FileTooLargeError, NotRegularFileError, read_regular_file
from ..searcher import SearchResult
from .errors import ApiError, StrictJSONResponse
from .indices import IMAGE_TYPES, ServedIndex
from .limits import decode_base64, get_bool, get_int, get_str, get_vector, parse_json_object, read_body
from .queries import Query, check_filters, check_modality, run_query
from .state import ServiceState

QUERY_FIELDS = ("text", "image", "embedding", "id", "query")


def parse_item_id(text: str) -> int:
    """A path's item id as an int, or a 400 naming the bad value (no signs, no floats, at most 18 digits)."""
    if not text.isdigit() or len(text) > 18:
        raise ApiError(400, f"item id must be a non-negative integer, got {text[:50]!r}")
    return int(text)


def result_json(served: ServedIndex, result: SearchResult) -> dict[str, Any]:
    """One result as the native API returns it: id, score, metadata and, when servable, its image URL."""
    out: dict[str, Any] = {"id": result.id, "score": result.score, "metadata": result.metadata}
    if served.roots and result.metadata.get("image_path"):
        out["image"] = f"/items/{result.id}/image?index={served.name}"
    return out


def _where(values: list[str]) -> dict[str, str | list[str]]:
    """`where=colour=red&where=colour=blue&where=kind=a` -> {"colour": ["red", "blue"], "kind": "a"}."""
    filters: dict[str, list[str]] = {}
    for item in values:
        column, sep, value = item.partition("=")
        if not sep or not column:
            raise ApiError(400, f"where={item[:100]!r}: write where=COLUMN=VALUE")
        filters.setdefault(column, []).append(value)
    return {c: v[0] if len(v) == 1 else v for c, v in filters.items()}


def build_router(state: ServiceState) -> APIRouter:
    """The native endpoints over `state`."""
    config = state.config
    router = APIRouter()

    async def answer(served: ServedIndex, query: Query) -> Response:
        start = time.perf_counter()
        results = await state.limiter.run(run_query, served, query, config)
        return StrictJSONResponse(
            {
                "index": served.name,
                "modality": query.modality,
                "k": query.k,
                "took_ms": round((time.perf_counter() - start) * 1000, 3),
                "results": [result_json(served, r) for r in results],
            }
        )

    @router.get("/search")
    async def search_get(request: Request) -> Response:
        params = request.query_params
        for name in params:
            if name not in ("q", "k", "index", "where", "dedup", "deduplicate", "modality"):
                raise ApiError(400, f"unknown parameter {name[:50]!r}; use q, k, index, where, dedup, modality")
        fields: dict[str, Any] = {name: params.get(name) for name in params if name != "where"}
        served = state.index(fields.get("index"))
        q = get_str(fields, "q", config.max_query_chars)
        if not q or not q.strip():
            raise ApiError(400, "give a query: /search?q=TEXT (text and id:N terms, rclip syntax)")
        query = Query(
            "query",
            q,
            k=get_int(fields, "k", 10, 1, config.max_k),
            modality=check_modality(served, fields.get("modality") or "image"),
            filters=check_filters(served, _where(params.getlist("where")), config),
            deduplicate=get_bool(fields, "dedup", get_bool(fields, "deduplicate", False)),
        )
        return await answer(served, query)

    @router.post("/search")
    async def search_post(request: Request) -> Response:
        data = parse_json_object(await read_body(request, config.max_body_bytes))
        unknown = sorted(set(data) - {*QUERY_FIELDS, "k", "index", "modality", "filters", "deduplicate"})
        if unknown:
            raise ApiError(400, f"unknown field(s) {unknown[:5]}; see the API's fields: {list(QUERY_FIELDS)}, k, "
                           "index, modality, filters, deduplicate")
        served = state.index(data.get("index"))
        given = [name for name in QUERY_FIELDS if data.get(name) is not None]
        if len(given) != 1:
            raise ApiError(400, f"give exactly one of {list(QUERY_FIELDS)}; the request has {given or 'none'}")
        kind = given[0]
        value: Any
        if kind in ("text", "query"):
            value = get_str(data, kind, config.max_query_chars)
            if not value.strip():
                raise ApiError(400, f"'{kind}' is empty")
        elif kind == "image":
            value = decode_base64(get_str(data, "image", config.max_body_bytes) or "", "image", config.max_upload_bytes)
        elif kind == "embedding":
            value = get_vector(data, "embedding", served.dim)
        else:
            value = get_int(data, "id", None, 0, 2**62)
        query = Query(
            kind,  # type: ignore[arg-type]
            value,
            k=get_int(data, "k", 10, 1, config.max_k),
            modality=check_modality(served, data.get("modality") or "image"),
            filters=check_filters(served, data.get("filters"), config),
            deduplicate=get_bool(data, "deduplicate", False),
        )
        return await answer(served, query)

    @router.get("/indices")
    async def indices() -> Response:
        return StrictJSONResponse({"indices": [served.summary() for served in state.indices.values()]})

    @router.get("/items/{item_id}")
    async def item(item_id: str, index: str | None = None) -> Response:
        served = state.index(index)
        number = parse_item_id(item_id)
        metadata = await state.limiter.run(served.metadata, [number])
        body: dict[str, Any] = {"id": number, "index": served.name, "metadata": metadata[0]}
        if served.roots and metadata[0].get("image_path"):
            body["image"] = f"/items/{number}/image?index={served.name}"
        return StrictJSONResponse(body)

    @router.get("/items/{item_id}/image")
    async def item_image(item_id: str, index: str | None = None) -> Response:
        served = state.index(index)
        number = parse_item_id(item_id)

        def read() -> tuple[bytes, str]:
            path = served.image_file(served.metadata([number])[0].get("image_path"))
            try:
                data = read_regular_file(path, config.max_image_file_bytes, what="image")
            except NotRegularFileError:
                raise ApiError(403, "this item's image is not a regular file; it is not served") from None
            except FileTooLargeError:
                raise ApiError(403, f"this item's image is over {config.max_image_file_bytes:,} bytes") from None
            except OSError:
                raise ApiError(404, "this item's image cannot be read") from None
            return data, IMAGE_TYPES[path.suffix.lower()]

        data, media_type = await state.limiter.run(read)
        return Response(data, media_type=media_type, headers={"X-Content-Type-Options": "nosniff"})

    @router.get("/health")
    async def health() -> Response:
        return StrictJSONResponse({"status": "ok", "indices": list(state.indices)})

    @router.get("/metrics")
    async def metrics() -> Response:
        text = state.metrics.render(state.gauges())
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    return router
