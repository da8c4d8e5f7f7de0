"""The search page (`GET /`) and its two static files, served by the same app as the JSON API it calls.

Plain HTML/JS/CSS shipped as package data (no build step, nothing fetched from a CDN), read once when the app is
made. Every file goes out with a strict Content-Security-Policy: scripts, styles and connections only from this
server (the page has no inline script or event handler), images from this server or from `blob:` URLs (the
query-image preview, and thumbnails fetched with a bearer token, which an `<img src>` cannot send). The page's
paths carry no data, so the bearer-token check lets them through (`PAGE_PATHS`): the page then asks for the
token when the API answers 401.
"""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter
from starlette.responses import Response

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' blob:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
    "form-action 'self'"
)
FILES = {  # URL path -> (file in this package, media type)
    "/": ("index.html", "text/html; charset=utf-8"),
    "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/static/style.css": ("style.css", "text/css; charset=utf-8"),
}
PAGE_PATHS = frozenset(FILES)  # served without the bearer token
HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",  # revalidate: a new clipforge's page replaces the old one at once
}


def read_page_files() -> dict[str, bytes]:
    """{file name: bytes} of the page's files, from the installed package (a wheel carries them as package data).

    A missing file is an installation error, said here (when the app is made) rather than as a 404 later."""
    folder = resources.files(__name__)
    out: dict[str, bytes] = {}
    for name, _ in FILES.values():
        try:
            out[name] = folder.joinpath(name).read_bytes()
        except OSError as exc:
            raise OSError(
                f"the search page's {name} is missing from the clipforge package ({exc}); reinstall clipforge"
            ) from exc
    return out


def build_router() -> APIRouter:
    """GET / (the page), /static/app.js and /static/style.css; other /static/ paths get the app's 404."""
    contents = read_page_files()
    router = APIRouter()

    def add(path: str, name: str, media_type: str) -> None:
        body = contents[name]

        async def serve() -> Response:
            return Response(body, media_type=media_type, headers=HEADERS)

        router.add_api_route(path, serve, methods=["GET"], include_in_schema=False, name=f"page:{name}")

    for path, (name, media_type) in FILES.items():
        add(path, name, media_type)
    return router
