"""Search a collection: embed it (pipeline), index it, query it, serve it. See `search.layout` for the INDEX_DIR."""

from .layout import IndexLayout, IndexLayoutError

__all__ = ["IndexLayout", "IndexLayoutError"]
