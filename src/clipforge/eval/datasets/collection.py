"""The built-in OpenClipart and Noto emoji collections as evaluation sets (clipforge.collections).

Each is a retrieval set (every rendered item with its caption: the cleaned title, or the emoji's name) or, with
task="classification", a class-folder-style set: OpenClipart's classes are its top-level categories ("animals",
"signs and symbols", ...; "unsorted" and "special" (gradients, patterns, examples) are left out, as they name no
kind of drawing), emoji's are the Unicode emoji groups ("Smileys & Emotion", ..., "Flags"; emoji newer than the
group table are left out). Items are rendered on demand through the on-disk render cache, so a second evaluation
(or one in DataLoader workers) reads PNGs; an item that cannot be rendered fails as ImageLoadError, which the
encoder skips and counts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from PIL import Image

from clipforge.collections.emoji import EMOJI_FONT, EMOJI_FONT_INSTALL, EMOJI_LAYOUT
from clipforge.collections.entries import CollectionEntry, collection_entries
from clipforge.collections.openclipart import OPENCLIPART_INSTALL, OPENCLIPART_LAYOUT, OPENCLIPART_ROOT
from clipforge.collections.render import RenderCache, RenderError, RenderJob
from clipforge.image import ImageLoadError, load_image

from .base import ClassificationSet, DatasetNotFound, RetrievalSet, check_split, fingerprint, readable_name

OPENCLIPART_EXCLUDED = ("unsorted", "special")
CLIPART_TEMPLATES = (
    "a clip art drawing of {}.",
    "a vector illustration of {}.",
    "an icon of {}.",
    "a simple drawing of {}.",
    "clip art: {}.",
)
EMOJI_TEMPLATES = (
    "an emoji from the group {}.",
    "an emoji: {}.",
    "a {} emoji.",
    "an emoji icon, {}.",
)


@dataclass(frozen=True)
class RenderedImages:
    """Items rendered through the render cache (picklable, for DataLoader workers)."""

    jobs: tuple[RenderJob, ...]
    cache_dir: str | None = None

    def __call__(self, i: int) -> Image.Image:
        job = self.jobs[i]
        try:
            png = RenderCache(self.cache_dir).path(job)
        except RenderError as exc:
            raise ImageLoadError(f"{job.label}: cannot be rendered: {exc}") from exc
        return load_image(png, name=job.label)


def _entries(name: str, root: str | None, size: int, variants: bool) -> list[CollectionEntry]:
    where = root or (OPENCLIPART_ROOT if name == "openclipart" else EMOJI_FONT)
    layout, install = (
        (OPENCLIPART_LAYOUT, OPENCLIPART_INSTALL) if name == "openclipart" else (EMOJI_LAYOUT, EMOJI_FONT_INSTALL)
    )
    try:
        entries = collection_entries(name, size, root, variants=variants)
    except FileNotFoundError as exc:
        raise DatasetNotFound(name, where, layout, install) from exc
    if not entries:
        raise DatasetNotFound(name, where, layout, install)
    return entries


def _load(
    name: str, root: str | None, split: str, task: str, size: int, cache_dir: str | None, variants: bool
) -> ClassificationSet | RetrievalSet:
    check_split(name, split, ["test"])
    if task not in ("retrieval", "classification"):
        raise ValueError(f"{name}: task must be 'retrieval' or 'classification', got {task!r}")
    entries = _entries(name, root, size, variants)
    where = root or (OPENCLIPART_ROOT if name == "openclipart" else EMOJI_FONT)
    if task == "classification":
        excluded = OPENCLIPART_EXCLUDED if name == "openclipart" else ()
        entries = [e for e in entries if e.category and e.category not in excluded]
    ids = [f"{e.relative}:{size}" for e in entries]
    print_id = fingerprint(name, f"{split}-{task}-{size}" + ("-variants" if variants else ""), where, ids)
    images = RenderedImages(tuple(e.job for e in entries), None if cache_dir is None else os.fspath(cache_dir))
    if task == "retrieval":
        return RetrievalSet(name, split, tuple((e.caption,) for e in entries), print_id, images)
    # openclipart: categories sorted by name; emoji: groups in Unicode's order (the entries' order)
    categories = [e.category for e in entries]
    classes = sorted(set(categories)) if name == "openclipart" else list(dict.fromkeys(categories))
    index = {c: i for i, c in enumerate(classes)}
    return ClassificationSet(
        name=name,
        split=split,
        classnames=tuple(readable_name(c) if name == "openclipart" else c for c in classes),
        templates=CLIPART_TEMPLATES if name == "openclipart" else EMOJI_TEMPLATES,
        labels=tuple(index[e.category] for e in entries),
        fingerprint=print_id,
        images=images,
    )


def load_openclipart_set(
    root: str | None, split: str = "test", *, task: str = "retrieval", size: int = 224, cache_dir: str | None = None
) -> ClassificationSet | RetrievalSet:
    """OpenClipart drawings: retrieval on the cleaned titles, or classification by top-level category.

    Args:
        size: the side in pixels each SVG is rendered at (before the model's own preprocessing).
        cache_dir: the render cache folder (None: $XDG_CACHE_HOME/clipforge/render).
    """
    return _load("openclipart", root, split, task, size, cache_dir, False)


def load_emoji_set(
    root: str | None,
    split: str = "test",
    *,
    task: str = "retrieval",
    size: int = 224,
    cache_dir: str | None = None,
    variants: bool = False,
) -> ClassificationSet | RetrievalSet:
    """Noto emoji: retrieval on their names, or classification by Unicode group; `root` is the font file.

    Args:
        size: the side in pixels each emoji is rendered at.
        cache_dir: the render cache folder (None: $XDG_CACHE_HOME/clipforge/render).
        variants: keep skin-tone variants (left out by default: near copies of their base emoji).
    """
    return _load("emoji", root, split, task, size, cache_dir, variants)
