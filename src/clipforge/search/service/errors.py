"""One error shape for the whole service: every refused request is a 4xx JSON `{"error": "..."}`.

Handlers turn clipforge's own errors (ApiError), Starlette's (unknown route: 404, wrong method: 405) and FastAPI's
validation errors into that shape; anything unexpected becomes a 500 `{"error": "internal error"}` whose traceback
goes to the server's log, never to the client.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from ...jsonio import json_text

log = logging.getLogger("clipforge.search.service")

MAX_ERROR_CHARS = 1_000  # an error quotes the input (a query, a column): a 1 MB one is no message


class StrictJSONResponse(Response):
    """JSON through clipforge.jsonio (NaN/inf -> null): what browsers and `jq` read, always."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        """Strict JSON (NaN/inf refused, as every clipforge JSON writer), compact, UTF-8."""
        return json_text(content, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


class ApiError(Exception):
    """A request the service refuses: HTTP `status` (4xx, or 503 when busy) and a message saying what to do."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def _short(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= MAX_ERROR_CHARS else text[:MAX_ERROR_CHARS] + "..."


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> StrictJSONResponse:
    """The one error shape of the API: `{"error": message}` (shortened) with the given status."""
    return StrictJSONResponse({"error": _short(message)}, status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers that give every error the `{"error": ...}` shape."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> Response:
        return error_response(exc.status, exc.message, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404:
            message = f"no endpoint {request.url.path}; see GET /indices, /search, /items/ID, /health, /metrics"
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        else:
            message = str(exc.detail)
        return error_response(exc.status_code, message, dict(exc.headers or {}))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()))
        return error_response(400, f"{where}: {first.get('msg', 'invalid request')}")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error answering %s %s", request.method, request.url.path)
        return error_response(500, "internal error; the server's log has the details")
