"""`create_app`: the search service as a FastAPI app (native JSON API, clip-back API, metrics), for uvicorn.

Requests pass, outermost first: the metrics middleware (times and counts everything, refused requests too), CORS
(only when origins are configured), the bearer-token check (when a token is set), then the routes. Searches run in
worker threads, at most `max_concurrency` at once (limits.ConcurrencyLimiter), so the event loop keeps accepting
and refusing requests while the CPU searches.
"""

from __future__ import annotations

import os

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from ... import __version__
from . import clipback, native, web
from .clipback import IGNORED_HEADER
from .config import ServiceConfig
from .errors import install_error_handlers
from .indices import open_indices
from .limits import BearerTokenMiddleware, ConcurrencyLimiter
from .metrics import Metrics, MetricsMiddleware
from .state import ServiceState


def create_app(indices: dict[str, str | os.PathLike], config: ServiceConfig | None = None) -> FastAPI:
    """A FastAPI app serving `indices` ({name: INDEX_DIR}); the first one answers requests that name none.

    Opens every index (and, with `config.preload_model`, its query model) now: a broken index fails here with a
    ValueError/OSError naming it, not on the first request."""
    config = config or ServiceConfig()
    served = open_indices(indices, config)
    state = ServiceState(
        served,
        config,
        ConcurrencyLimiter(config.max_concurrency, config.max_queue, config.queue_timeout_s),
        Metrics(),
    )
    app = FastAPI(
        title="clipforge search",
        version=__version__,
        summary="Search CLIP indices by text, image, embedding or id; clip-retrieval's clip-back API included.",
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.search = state
    install_error_handlers(app)
    app.include_router(native.build_router(state))
    app.include_router(clipback.build_router(state))
    app.include_router(web.build_router())  # GET /: the search page, and its /static/ files
    if config.token is not None:
        app.add_middleware(BearerTokenMiddleware, token=config.token)
    if config.cors_origins:  # outside the token check: a browser's preflight request carries no token
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(config.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
            expose_headers=[IGNORED_HEADER, "Retry-After"],
        )
    app.add_middleware(MetricsMiddleware, metrics=state.metrics)  # added last: outermost
    return app
