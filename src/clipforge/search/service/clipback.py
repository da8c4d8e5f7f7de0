"""clip-retrieval's clip-back API, so that its `ClipClient` (and clip-front) work against clipforge unchanged.

What clip-back answers (clip_retrieval/clip_back.py, rom1504/clip-retrieval 2.45):

    POST /knn-service  body (ClipClient: `requests.post(url, data=json.dumps({...}))`, no Content-Type):
        {"text", "image" (base64 of the file's bytes), "image_url", "embedding_input", "deduplicate",
         "use_safety_model", "use_violence_detector", "indice_name", "use_mclip", "aesthetic_score",
         "aesthetic_weight", "modality", "num_images", "num_result_ids"}   (unused ones null)
        -> a bare JSON list [{<metadata columns>, "id", "similarity", "image"?}, ...]
    GET  /indices-list -> ["name", ...]
    POST /metadata {"indice_name", "ids": [...]} -> [{"id", "metadata": {<columns>, "image"?}}, ...]

As clip-back: the query is the text when non-empty, else the image (or image_url), else embedding_input; the
`modality` index (image or text embeddings) is searched for `num_result_ids` rows and the first `num_images` of
them carry metadata (ClipClient sends both equal); `deduplicate` drops near-duplicates (cosine >= 0.94), except that
clipforge then fetches more so that the answer still has `num_result_ids` results where the index has them;
`indice_name` null means the first index; `image` is the result's image file re-encoded as base64 JPEG.

What clipforge does not have: the NSFW safety model, the violence detector, LAION's aesthetic embeddings and
multilingual CLIP (mclip). ClipClient asks for the first three by default (use_safety_model=True,
use_violence_detector=True, aesthetic_score=9), and clip-back itself skips each one its operator did not load,
silently. clipforge skips them too, but says so: the answer carries `X-Clipforge-Ignored: use_safety_model,...`
listing every such field sent with a true (or, for aesthetic_score, any) value, and the server logs it once. With
`ServiceConfig.strict_clipback` (`clipforge serve --clipback-strict`) such requests are refused with 422 instead.
`image_url` is fetched only when the server allows it (`--allow-image-url`); otherwise 403.
"""

from __future__ import annotations

import base64
import io
import logging
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from ...image.loading import load_image
from ...safeio import read_regular_file
from .errors import ApiError, StrictJSONResponse
from .indices import ServedIndex
from .limits import decode_base64, get_bool, get_int, get_str, get_vector, parse_json_object, read_body
from .queries import Query, check_modality, run_query
from .state import ServiceState

log = logging.getLogger("clipforge.search.service")

KNN_FIELDS = (
    "text", "image", "image_url", "embedding_input", "deduplicate", "use_safety_model", "use_violence_detector",
    "indice_name", "use_mclip", "aesthetic_score", "aesthetic_weight", "modality", "num_images", "num_result_ids",
)  # fmt: skip
IGNORED_HEADER = "X-Clipforge-Ignored"


def unsupported_fields(data: dict[str, Any]) -> list[str]:
    """The fields of a knn request asking for what clipforge does not have (see the module docstring)."""
    asked = []
    for name in ("use_safety_model", "use_violence_detector", "use_mclip"):
        if get_bool(data, name, False):
            asked.append(name)
    if data.get("aesthetic_score") not in (None, ""):
        asked.append("aesthetic_score")
        if data.get("aesthetic_weight") not in (None, "", 0, 0.0):
            asked.append("aesthetic_weight")
    return asked


def inline_image(served: ServedIndex, metadata: dict[str, Any], max_bytes: int, max_pixels: int) -> str | None:
    """The item's image as base64 JPEG (clip-back's `image` field), or None when it cannot or may not be read."""
    try:
        path = served.image_file(metadata.get("image_path"))
        image = load_image(read_regular_file(path, max_bytes, what="image"), max_pixels=max_pixels, name=str(path))
    except (ApiError, OSError, ValueError):
        return None
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def build_router(state: ServiceState) -> APIRouter:
    """The clip-back endpoints over `state`."""
    config = state.config
    router = APIRouter()
    logged: set[str] = set()

    def with_images(served: ServedIndex, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if config.clipback_images and served.roots:
            for row in rows:
                image = inline_image(served, row, config.max_image_file_bytes, config.max_pixels)
                if image is not None:
                    row["image"] = image
        return rows

    @router.get("/indices-list")
    async def indices_list() -> Response:
        return StrictJSONResponse(list(state.indices))

    @router.post("/knn-service")
    async def knn_service(request: Request) -> Response:
        data = parse_json_object(await read_body(request, config.max_body_bytes))
        served = state.index(data.get("indice_name"))
        ignored = unsupported_fields(data)
        if ignored and config.strict_clipback:
            raise ApiError(
                422,
                f"this server has no {', '.join(ignored)} (clipforge serves no safety model, violence detector, "
                "aesthetic embeddings or multilingual CLIP); send them false/null, or ask the operator to run "
                "without --clipback-strict to have them ignored",
            )
        for name in set(ignored) - logged:
            logged.add(name)
            log.warning("clip-back requests ask for %s, which clipforge does not have: ignored (header %s)",
                        name, IGNORED_HEADER)
        if data.get("modality") is None:
            raise ApiError(400, "'modality' is required ('image' or 'text'), as clip-back requires it")
        modality = check_modality(served, data.get("modality"))
        num_images = get_int(data, "num_images", None, 1, config.max_k)
        if num_images is None:
            raise ApiError(400, "'num_images' is required (how many results to return)")
        num_result_ids = get_int(data, "num_result_ids", num_images, 1, config.max_k)
        deduplicate = get_bool(data, "deduplicate", False)
        text = get_str(data, "text", config.max_query_chars)
        image = get_str(data, "image", config.max_body_bytes)
        image_url = get_str(data, "image_url", 4096)
        embedding = get_vector(data, "embedding_input", served.dim)
        if text:  # clip-back's order: text, then image / image_url, then embedding
            kind, value = "text", text
        elif image:
            kind, value = "image", decode_base64(image, "image", config.max_upload_bytes)
        elif image_url:
            if not config.allow_image_url:
                raise ApiError(
                    403,
                    "this server does not fetch image URLs (it would reach any address it is sent); send the image "
                    "itself as 'image' (base64 of its bytes), or start the server with --allow-image-url",
                )
            kind, value = "url", image_url
        elif embedding is not None:
            kind, value = "embedding", embedding
        else:
            raise ApiError(400, "must fill one of text, image, image_url and embedding_input")
        query = Query(kind, value, k=num_result_ids, modality=modality, deduplicate=deduplicate)  # type: ignore[arg-type]

        def work() -> list[dict[str, Any]]:
            results = run_query(served, query, config)
            rows = [dict(r.metadata) for r in results[:num_images]]
            rows = with_images(served, rows)
            out = []
            for i, result in enumerate(results):
                row = rows[i] if i < len(rows) else {}
                out.append({**row, "id": result.id, "similarity": result.score})
            return out

        answer = await state.limiter.run(work)
        headers = {IGNORED_HEADER: ", ".join(ignored)} if ignored else None
        return StrictJSONResponse(answer, headers=headers)

    @router.post("/metadata")
    async def metadata(request: Request) -> Response:
        data = parse_json_object(await read_body(request, config.max_json_bytes))
        served = state.index(data.get("indice_name"))
        ids = data.get("ids")
        if not isinstance(ids, list):
            raise ApiError(400, "'ids' must be an array of item ids")
        if len(ids) > config.max_ids:
            raise ApiError(413, f"{len(ids):,} ids; this server looks up at most {config.max_ids:,} at once")
        numbers = [get_int({"ids": i}, "ids", None, 0, 2**62) for i in ids]
        if None in numbers:
            raise ApiError(400, "'ids' must hold integers, not null")

        def work() -> list[dict[str, Any]]:
            rows = with_images(served, served.metadata(numbers))  # type: ignore[arg-type]
            return [{"id": i, "metadata": row} for i, row in zip(numbers, rows)]

        return StrictJSONResponse(await state.limiter.run(work))

    return router
