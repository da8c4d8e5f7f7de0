"""The search service (`clipforge serve`): a FastAPI app answering clipforge's JSON API and clip-retrieval's
clip-back API over one or more INDEX_DIRs. See `app.create_app`, `native` and `clipback` for the endpoints,
`config.ServiceConfig` and `limits` for what is accepted."""

from .app import create_app
from .config import ServiceConfig
from .errors import ApiError

__all__ = ["ApiError", "ServiceConfig", "create_app"]
