"""The built-in OpenClipart and Noto emoji collections as training sources of (rendered image, caption) pairs.

Items are rendered on first use, inside the DataLoader worker that draws them, into the on-disk render cache
(clipforge.collections.render), so the first epoch pays for rendering once and later epochs read PNGs. Drawings
are rendered at COLLECTION_TRAIN_SIZE pixels, a little above the usual 224 so random crops keep full
resolution; an item that cannot be rendered is a bad sample (skipped, replaced and counted like a corrupt image).
"""

from __future__ import annotations

from clipforge.collections.entries import collection_entries
from clipforge.collections.render import RenderCache, RenderError

from ..bad import BadSample
from ..tarsamples import RawSample
from .base import MapSource

COLLECTION_TRAIN_SIZE = 256


class CollectionSource(MapSource):
    """Collection `kind` ("openclipart" or "emoji"); `path` is the SVG folder or the emoji font (None: Debian's)."""

    def __init__(self, kind: str, path: str | None = None, cache_dir: str | None = None) -> None:
        self.name = kind if path is None else f"{kind}:{path}"
        self.entries = collection_entries(kind, COLLECTION_TRAIN_SIZE, path)
        self.cache = RenderCache(cache_dir)

    def __len__(self) -> int:
        return len(self.entries)

    def read(self, index: int) -> RawSample:
        entry = self.entries[index]
        try:
            png = self.cache.path(entry.job)
        except RenderError as exc:
            raise BadSample(entry.job.label, f"cannot be rendered: {exc}") from exc
        return RawSample(image=png, caption=entry.caption, name=entry.job.label, label=entry.job.label)
