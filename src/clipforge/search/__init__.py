"""Search a collection: embed it (pipeline), index it, query it, serve it. See `search.layout` for the INDEX_DIR."""

from .dedup import near_duplicate_groups
from .index import IndexFileError, VectorIndex, build_index, open_index
from .layout import IndexLayout, IndexLayoutError
from .query import parse_query
from .searcher import Searcher, SearchResult
from .store import MetadataStore

__all__ = [
    "IndexFileError",
    "IndexLayout",
    "IndexLayoutError",
    "MetadataStore",
    "SearchResult",
    "Searcher",
    "VectorIndex",
    "build_index",
    "near_duplicate_groups",
    "open_index",
    "parse_query",
]
