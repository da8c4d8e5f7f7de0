"""What the service accepts, and how much of it: request bodies, JSON fields, uploads, tokens, work in flight.

Each function here turns one kind of bad input into an ApiError that says what was wrong and what to send instead,
so the endpoints read as the happy path. Bodies are read whatever their Content-Type (clip-retrieval's ClipClient
posts `requests.post(url, data=json.dumps(...))`, which sends none), capped before and while reading.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import math
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from .errors import ApiError, error_response
from .web import PAGE_PATHS

T = TypeVar("T")

OPEN_PATHS = frozenset({"/health"}) | PAGE_PATHS  # answered without the token: load balancers probe /health;
# the page holds no data and asks for the token itself


# ------------------------------------------------------------------------------------------ bodies and fields


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The request body, refused with 413 when it is (or grows) larger than `max_bytes`."""
    length = request.headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise ApiError(400, f"Content-Length {length!r} is not a number of bytes")
        if int(length) > max_bytes:
            raise ApiError(413, f"request body of {int(length):,} bytes; this server accepts at most {max_bytes:,}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise ApiError(413, f"request body over {max_bytes:,} bytes; this server accepts at most {max_bytes:,}")
        chunks.append(chunk)
    return b"".join(chunks)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON (use null for a missing number)")


def parse_json_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object (strict: NaN/Infinity refused, duplicate-free semantics of json.loads)."""
    if not body.strip():
        raise ApiError(400, "empty request body; send a JSON object")
    try:
        data = json.loads(body.decode("utf-8"), parse_constant=_refuse_constant)
    except UnicodeDecodeError:
        raise ApiError(400, "request body is not UTF-8 text; send a JSON object") from None
    except (json.JSONDecodeError, ValueError) as exc:
        raise ApiError(400, f"malformed JSON in the request body: {exc}") from None
    if not isinstance(data, dict):
        raise ApiError(400, f"the request body must be a JSON object, not a JSON {_json_type(data)}")
    return data


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def get_int(data: dict[str, Any], name: str, default: int | None, low: int, high: int) -> int | None:
    """Field `name` as an int in [low, high] (a whole JSON number or a decimal string); `default` when absent/null."""
    value = data.get(name)
    if value is None:
        return default
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value.strip())
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(400, f"'{name}' must be an integer, got a {_json_type(value)}: {value!r}"[:300])
    if not low <= value <= high:
        raise ApiError(400, f"'{name}' must be from {low} to {high}, got {value}")
    return value


_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off", "")


def get_bool(data: dict[str, Any], name: str, default: bool) -> bool:
    """Field `name` as a bool (JSON true/false, or true/false/1/0/yes/no in a query string); `default` when null."""
    value = data.get(name)
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise ApiError(400, f"'{name}' must be true or false, got a {_json_type(value)}: {value!r}"[:300])


def get_str(data: dict[str, Any], name: str, max_chars: int, default: str | None = None) -> str | None:
    """Field `name` as a string of at most `max_chars` characters; `default` when absent or null."""
    value = data.get(name)
    if value is None:
        return default
    if not isinstance(value, str):
        raise ApiError(400, f"'{name}' must be a string, got a {_json_type(value)}")
    if len(value) > max_chars:
        raise ApiError(413, f"'{name}' is {len(value):,} characters long; this server accepts at most {max_chars:,}")
    return value


def get_vector(data: dict[str, Any], name: str, dim: int) -> list[float] | None:
    """Field `name` as a list of `dim` finite numbers (an embedding); None when absent or null."""
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, list):
        raise ApiError(400, f"'{name}' must be an array of {dim} numbers, got a {_json_type(value)}")
    if len(value) != dim:
        raise ApiError(400, f"'{name}' has {len(value)} numbers; this index holds {dim}-d embeddings")
    for i, x in enumerate(value):
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
            raise ApiError(400, f"'{name}[{i}]' must be a finite number, got {x!r}"[:300])
    return value


def decode_base64(text: str, name: str, max_bytes: int) -> bytes:
    """The bytes of a base64 field (standard or URL-safe alphabet, data: URL prefix allowed), at most `max_bytes`."""
    if text.startswith("data:") and "," in text[:200]:
        text = text.split(",", 1)[1]
    text = "".join(text.split())
    if (len(text) * 3) // 4 > max_bytes + 3:
        raise ApiError(413, f"'{name}' holds about {(len(text) * 3) // 4:,} bytes; the limit is {max_bytes:,}")
    try:
        alt = b"-_" if ("-" in text or "_" in text) else None
        data = base64.b64decode(text + "=" * (-len(text) % 4), altchars=alt, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, f"'{name}' is not base64 (send the file's bytes base64-encoded)") from None
    if len(data) > max_bytes:
        raise ApiError(413, f"'{name}' is {len(data):,} bytes; the limit is {max_bytes:,}")
    if not data:
        raise ApiError(400, f"'{name}' is empty")
    return data


# ------------------------------------------------------------------------------------------ bearer token


class BearerTokenMiddleware:
    """Refuse (401) every HTTP request but those to OPEN_PATHS without `Authorization: Bearer TOKEN`.

    The comparison is hmac.compare_digest over bytes: it takes as long whatever prefix of the token is right."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        given = b""
        for key, value in scope.get("headers", ()):
            if key == b"authorization":
                given = value
                break
        if not hmac.compare_digest(given, self.expected):
            what = "a wrong token" if given else "no token"
            response = error_response(
                401,
                f"this server needs a bearer token and the request had {what}; send 'Authorization: Bearer TOKEN'",
                {"WWW-Authenticate": 'Bearer realm="clipforge"'},
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


# ------------------------------------------------------------------------------------------ concurrency


class ConcurrencyLimiter:
    """At most `limit` searches at once, each in a worker thread; up to `queue` more wait `timeout_s` for a slot.

    Beyond that a request gets 503 with `Retry-After` at once: a server that queues without bound answers
    everything late instead of some things now. The counters are read by /metrics. One limiter serves one event
    loop at a time (uvicorn runs one); its semaphore is made on the loop that first uses it."""

    def __init__(self, limit: int, queue: int, timeout_s: float) -> None:
        self.limit = limit
        self.queue = queue
        self.timeout_s = timeout_s
        self.active = 0
        self.waiting = 0
        self.rejected = 0
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._semaphore: asyncio.Semaphore | None = None

    def _semaphore_here(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._loop, self._semaphore = loop, asyncio.Semaphore(self.limit)
        assert self._semaphore is not None
        return self._semaphore

    def _busy(self, why: str) -> ApiError:
        with self._lock:
            self.rejected += 1
        return ApiError(
            503, f"the server is busy ({why}); retry in a moment", {"Retry-After": str(max(1, round(self.timeout_s)))}
        )

    async def run(self, func: Callable[..., T], *args: Any) -> T:
        """`func(*args)` in a worker thread once a slot is free (503 when none frees in time)."""
        semaphore = self._semaphore_here()
        if semaphore.locked():
            if self.waiting >= self.queue:
                raise self._busy(f"{self.limit} searches running and {self.waiting} waiting")
            self.waiting += 1
            try:
                await asyncio.wait_for(semaphore.acquire(), self.timeout_s)
            except asyncio.TimeoutError:
                raise self._busy(f"no search slot freed within {self.timeout_s:g} s") from None
            finally:
                self.waiting -= 1
        else:
            await semaphore.acquire()
        self.active += 1
        try:
            return await anyio.to_thread.run_sync(func, *args)
        finally:
            self.active -= 1
            semaphore.release()
