"""`clipforge serve INDEX [INDEX...]`: serve INDEX_DIRs over HTTP (clipforge's JSON API and clip-retrieval's
clip-back API), with uvicorn.

Safe by default: it listens on 127.0.0.1 (this machine only) unless --host says otherwise, and warns when it
listens on another address without --token; uploads, pixels, query lengths, result counts and work in flight are
capped (see clipforge.search.service.config.ServiceConfig); image URLs are fetched only with --allow-image-url.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import re
from pathlib import Path

from .argtypes import positive_int
from .common import add_common_arguments
from .errors import INPUT_NOT_FOUND, CliError, CliParser, UsageError, command, exit_codes_epilog

log = logging.getLogger("clipforge.cli")

TOKEN_ENV = "CLIPFORGE_TOKEN"

ENDPOINTS = """endpoints (JSON; errors are 4xx {"error": "..."}):
  GET  /search?q=TEXT&k=10&index=NAME&where=COLUMN=VALUE&dedup=true   text and id:N terms (rclip syntax)
  POST /search      {"text" | "image" (base64) | "embedding" | "id" | "query", "k", "index", "filters", ...}
  GET  /indices     GET /items/ID?index=NAME     GET /items/ID/image?index=NAME (files under the image roots only)
  GET  /health      GET /metrics (Prometheus)
  clip-retrieval's clip-back API, for its ClipClient and clip-front:
  POST /knn-service     GET /indices-list     POST /metadata
  (ClipClient's use_safety_model / use_violence_detector / aesthetic_score / use_mclip are ignored and listed in
  the X-Clipforge-Ignored response header; --clipback-strict refuses them with 422 instead)

examples:
  clipforge serve photos.index                       http://127.0.0.1:1234/search?q=a+red+car
  clipforge serve art=clipart.index emoji=emoji.index --port 8080
  CLIPFORGE_TOKEN=... clipforge serve photos.index --host 0.0.0.0
  python -c "from clip_retrieval.clip_client import ClipClient; \\
      print(ClipClient('http://127.0.0.1:1234/knn-service', 'photos').query(text='a cat'))"

"""


def build_parser() -> argparse.ArgumentParser:
    """The `clipforge serve` argument parser (also the source of its --help)."""
    parser = CliParser(
        prog="clipforge serve",
        description="Serve one or more INDEX_DIRs (made by `clipforge index build`) over HTTP: search by text, "
        "image, embedding or row; item metadata and images; Prometheus metrics; and clip-retrieval's clip-back "
        "API, so its ClipClient works unchanged. Listens on 127.0.0.1 unless --host is given.",
        epilog=ENDPOINTS + exit_codes_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "indices", nargs="+", metavar="INDEX",
        help="an INDEX_DIR, or NAME=INDEX_DIR to choose its name (default: the folder's name); the first one "
        "answers requests that name no index",
    )  # fmt: skip
    net = parser.add_argument_group("network and access")
    net.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    net.add_argument("--port", type=positive_int, default=1234, help="port (default 1234, clip-back's)")
    net.add_argument(
        "--token",
        default=None,
        help=f"require 'Authorization: Bearer TOKEN' on every endpoint but /health (default: ${TOKEN_ENV}, else "
        "none); prefer the environment variable: a command line is visible to other users",
    )
    net.add_argument(
        "--allow-image-url", action="store_true",
        help="fetch image_url queries (clip-back) over the network (default: refused, the server fetches nothing)",
    )  # fmt: skip
    net.add_argument(
        "--image-root", action="append", default=[], metavar="FOLDER",
        help="also serve image files under FOLDER (default: only under each index's source folder); repeatable",
    )  # fmt: skip
    net.add_argument(
        "--cors-origin", action="append", default=[], metavar="ORIGIN",
        help="let web pages from ORIGIN (e.g. http://localhost:8080, where clip-front runs) call the API from a "
        "browser; repeatable; '*' allows any origin (default: none)",
    )  # fmt: skip
    api = parser.add_argument_group("clip-back compatibility")
    api.add_argument(
        "--clipback-strict", action="store_true",
        help="refuse (422) knn requests asking for the safety model, violence detector, aesthetic scores or mclip, "
        "instead of ignoring them and listing them in the X-Clipforge-Ignored header",
    )  # fmt: skip
    api.add_argument(
        "--no-clipback-images", action="store_true",
        help="leave out the base64 'image' field clip-back adds to each result (smaller, faster answers)",
    )  # fmt: skip
    limits = parser.add_argument_group("limits")
    limits.add_argument("--max-concurrency", type=positive_int, default=8, help="searches at once (default 8)")
    limits.add_argument(
        "--max-queue", type=int, default=64,
        help="requests waiting for a search slot (default 64); more get 503 with Retry-After",
    )  # fmt: skip
    limits.add_argument("--max-upload-bytes", type=positive_int, default=16 * 2**20, help="query image bytes (16 MiB)")
    limits.add_argument("--max-pixels", type=positive_int, default=50_000_000, help="query image pixels (50 M)")
    limits.add_argument("--max-k", type=positive_int, default=1000, help="results per query (default 1000)")
    limits.add_argument("--max-query-chars", type=positive_int, default=1000, help="query text length (default 1000)")
    model = parser.add_argument_group("model")
    model.add_argument("--device", default="cpu", help="torch device for query embedding (default cpu)")
    model.add_argument(
        "--lazy-model", action="store_true",
        help="load each index's model on its first text or image query instead of at start",
    )  # fmt: skip
    add_common_arguments(parser)
    return parser


_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.-]+")


def parse_indices(items: list[str]) -> dict[str, str]:
    """INDEX / NAME=INDEX arguments -> {name: path}; names default to the folder's name, made unique by refusal."""
    indices: dict[str, str] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or os.path.isdir(item):
            path = item
            name = _NAME_CHARS.sub("-", Path(item).resolve().name).strip("-.") or "index"
        if not Path(path).is_dir():
            hint = "give an INDEX_DIR made by `clipforge index build`"
            raise CliError(f"{path}: no such folder", hint, INPUT_NOT_FOUND)
        if name in indices:
            raise UsageError(f"two indices are named {name!r}", "name them: NAME=INDEX_DIR")
        indices[name] = path
    return indices


def is_loopback(host: str) -> bool:
    """Whether `host` is this machine only (localhost, 127.0.0.0/8, ::1): binding elsewhere without a token warns."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def run_server(app, host: str, port: int, verbosity: int) -> None:
    """uvicorn in this process until Ctrl-C (tests replace this function)."""
    import uvicorn

    level = "warning" if verbosity <= 0 else "info" if verbosity == 1 else "debug"
    uvicorn.run(app, host=host, port=port, log_level=level, access_log=verbosity >= 1, server_header=False)


@command("clipforge serve")
def main(argv: list[str] | None = None) -> int:
    """`clipforge serve`: serve INDEX_DIRs over HTTP until interrupted; returns the exit code."""
    args = build_parser().parse_args(argv)
    from ..search.service import ServiceConfig, create_app

    if args.max_queue < 0:
        raise UsageError(f"--max-queue must be 0 or more, got {args.max_queue}")
    token = args.token if args.token is not None else os.environ.get(TOKEN_ENV) or None
    if token is not None and len(token) < 8:
        hint = f"use a long random one: {TOKEN_ENV}=$(openssl rand -hex 16)"
        raise UsageError("the token must be at least 8 characters long", hint)
    if not is_loopback(args.host) and token is None:
        log.warning(
            "listening on %s without a token: anyone who can reach this address can search the indices and read "
            "their images; set %s (or --token)", args.host, TOKEN_ENV,
        )  # fmt: skip
    for root in args.image_root:
        if not Path(root).is_dir():
            raise CliError(f"--image-root {root}: no such folder", "", INPUT_NOT_FOUND)
    config = ServiceConfig(
        token=token,
        max_upload_bytes=args.max_upload_bytes,
        max_pixels=args.max_pixels,
        max_query_chars=args.max_query_chars,
        max_k=args.max_k,
        max_concurrency=args.max_concurrency,
        max_queue=args.max_queue,
        allow_image_url=args.allow_image_url,
        strict_clipback=args.clipback_strict,
        clipback_images=not args.no_clipback_images,
        image_roots=tuple(args.image_root),
        cors_origins=tuple(args.cors_origin),
        preload_model=not args.lazy_model,
        device=args.device,
    )
    app = create_app(parse_indices(args.indices), config)
    verbosity = logging.getLogger("clipforge").getEffectiveLevel()
    verbosity = 0 if verbosity >= logging.WARNING else 1 if verbosity == logging.INFO else 2
    shown = f"[{args.host}]" if ":" in args.host else args.host
    print(f"clipforge serve: http://{shown}:{args.port}/ ({', '.join(app.state.search.indices)}); Ctrl-C stops")
    run_server(app, args.host, args.port, verbosity)
    return 0
