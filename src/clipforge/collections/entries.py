"""One row per item of a built-in collection, the same for training, evaluation and export.

`collection_entries("openclipart" | "emoji", size)` lists what to render (a RenderJob), the caption, and the
metadata columns an export writes (title, keywords, category), plus a relative file name for the export.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from .emoji import EMOJI_FONT, check_font, load_emoji
from .openclipart import load_openclipart
from .render import RenderJob

COLLECTIONS: tuple[str, ...] = ("openclipart", "emoji")


@dataclass(frozen=True)
class CollectionEntry:
    """One item of a collection.

    Fields:
        job: how to render it.
        caption: the training / retrieval caption (openclipart: the cleaned title; emoji: its name).
        title: openclipart: the raw <dc:title>; emoji: its name.
        keywords: openclipart: the keywords joined by ", "; emoji: its Unicode subgroup.
        category: openclipart: the top-level folder; emoji: its Unicode group ("" when unknown).
        relative: a file name for exports, unique within the collection ("animals/birds/baby_tux.png").
    """

    job: RenderJob
    caption: str
    title: str
    keywords: str
    category: str
    relative: str


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "other"


def collection_entries(
    name: str, size: int, root: str | None = None, *, variants: bool = False
) -> list[CollectionEntry]:
    """The items of collection `name` rendered at `size` pixels.

    Args:
        root: openclipart: the SVG folder; emoji: the font file (None: the Debian install locations).
        variants: emoji: keep skin-tone variants.

    Raises FileNotFoundError naming the install command when the collection is not installed, ValueError for
    an unknown name.
    """
    if name == "openclipart":
        catalog = load_openclipart(root)
        return [
            CollectionEntry(
                job=item.job(size),
                caption=item.caption,
                title=item.metadata.title,
                keywords=", ".join(item.metadata.keywords),
                category=item.category,
                relative=os.path.splitext(os.path.relpath(item.path, catalog.root))[0] + ".png",
            )
            for item in catalog.items
            if item.caption
        ]
    if name == "emoji":
        font = check_font(root or EMOJI_FONT)
        return [
            CollectionEntry(
                job=item.job(size, font),
                caption=item.name,
                title=item.name,
                keywords=item.subgroup,
                category=item.group,
                relative=f"{_slug(item.group)}/{'-'.join(f'{ord(c):04x}' for c in item.emoji)}.png",
            )
            for item in load_emoji(variants)
        ]
    raise ValueError(f"unknown collection {name!r}; known: {list(COLLECTIONS)}")
