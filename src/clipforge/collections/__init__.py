"""Built-in image collections installed from Debian packages: OpenClipart drawings and Noto Color Emoji.

Module map: openclipart.py (listing, metadata, title cleaning), emoji.py (names and Unicode groups),
emoji_groups.py (the group table), render.py (SVG / emoji to PNG, the on-disk render cache, worker processes),
entries.py (one row per item, shared by the training source "openclipart"/"emoji" in clipforge.data, the
evaluation sets of the same names in clipforge.eval.datasets, and exports).
"""

from .emoji import EMOJI_FONT, EmojiItem, load_emoji
from .entries import COLLECTIONS, CollectionEntry, collection_entries
from .openclipart import OPENCLIPART_ROOT, ClipartCatalog, ClipartItem, clean_title, load_openclipart
from .render import RenderCache, RenderError, RenderJob, RenderResult, render_many

__all__ = [
    "COLLECTIONS",
    "EMOJI_FONT",
    "OPENCLIPART_ROOT",
    "ClipartCatalog",
    "ClipartItem",
    "CollectionEntry",
    "EmojiItem",
    "RenderCache",
    "RenderError",
    "RenderJob",
    "RenderResult",
    "clean_title",
    "collection_entries",
    "load_emoji",
    "load_openclipart",
    "render_many",
]
