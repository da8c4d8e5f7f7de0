"""The indices a service answers for: one opened Searcher each, its image roots, and safe access to its rows.

Everything a request may touch is opened here, at start (the faiss index, the metadata store and, unless told
otherwise, the query model), because Searcher opens things lazily and is not thread-safe while it does; after
`open_indices` the searches of concurrent requests only read.

Image files are served only from an index's image roots: the folder it was built from (an image folder, or a
CSV's folder, which relative paths in the CSV are relative to) and the folders the operator adds. A path from
the metadata is refused when it has a `..` component, when its real path (symlinks resolved) lies outside every
root, when it is not a regular file (FIFOs and devices are never opened), or when it has no image extension.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..layout import IndexLayout
from ..searcher import Searcher
from .config import ServiceConfig
from .errors import ApiError

log = logging.getLogger("clipforge.search.service")

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
IMAGE_TYPES = {
    ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp", ".gif": "image/gif",
    ".bmp": "image/bmp", ".tif": "image/tiff", ".tiff": "image/tiff",
}  # fmt: skip


@dataclass
class ServedIndex:
    """One INDEX_DIR as the service sees it (made by `open_indices`)."""

    name: str
    searcher: Searcher
    modalities: tuple[str, ...]
    roots: tuple[Path, ...]  # real paths of the folders images may be served from
    base: Path | None  # what relative image paths in the metadata are relative to
    deleted: frozenset[int]
    rows: int
    model_error: str | None = None
    _model_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def info(self) -> dict[str, Any]:
        """The index's info.json (model, dim, counts, index kinds)."""
        return self.searcher.info

    @property
    def dim(self) -> int:
        """Embedding width D: a query embedding must have it."""
        return self.searcher.dim

    @property
    def columns(self) -> list[str]:
        """Metadata column names (what `where`/`filters` and results carry)."""
        return list(self.searcher.store.columns)

    def summary(self) -> dict[str, Any]:
        """What GET /indices says about this index."""
        info = self.info
        model = info.get("model") if isinstance(info.get("model"), dict) else {}
        return {
            "name": self.name,
            "rows": self.rows,
            "live": self.rows - len(self.deleted),
            "dim": self.dim,
            "modalities": list(self.modalities),
            "columns": self.columns,
            "model": {"name": model.get("name"), "pretrained": model.get("pretrained")},
            "text_queries": self.model_error is None,
            "images_served": bool(self.roots),
            "index": {m: (info.get("index") or {}).get(m, {}).get("kind") for m in self.modalities},
        }

    def encoder(self) -> Any:
        """The query model (loaded once, under a lock: Searcher's lazy load is not thread-safe)."""
        if self.model_error is not None:
            raise ApiError(400, f"index {self.name!r} cannot embed text or images: {self.model_error}")
        with self._model_lock:
            try:
                return self.searcher.encoder
            except (ValueError, OSError) as exc:
                self.model_error = str(exc)
                log.error("index %s: the query model does not load: %s", self.name, exc)
                raise ApiError(400, f"index {self.name!r} cannot embed text or images: {exc}") from None

    def check_id(self, item_id: int) -> int:
        """`item_id` when it is a live row; 404 naming the range otherwise."""
        if not 0 <= item_id < self.rows:
            raise ApiError(404, f"index {self.name!r} has no item {item_id}; its ids are 0..{self.rows - 1}")
        if item_id in self.deleted:
            raise ApiError(404, f"item {item_id} of index {self.name!r} was removed by `clipforge index update`")
        return item_id

    def metadata(self, ids: list[int]) -> list[dict[str, Any]]:
        """Metadata rows of live ids (checked)."""
        for item_id in ids:
            self.check_id(item_id)
        if not ids:
            return []
        return [dict(row) for row in self.searcher.store.get(np.asarray(ids, dtype=np.int64))]

    def image_file(self, image_path: Any) -> Path:
        """The real path of an item's image, when it may be served (see the module docstring); ApiError if not."""
        if not self.roots:
            raise ApiError(
                404,
                f"index {self.name!r} serves no image files (its images are inside WebDataset shards, or it has no "
                "image folder); start `clipforge serve` with --image-root FOLDER to serve files under FOLDER",
            )
        if not isinstance(image_path, str) or not image_path or "\x00" in image_path:
            raise ApiError(404, "this item has no image path")
        path = Path(image_path)
        if ".." in path.parts:
            raise ApiError(403, f"image path {image_path!r} contains '..'; only files under the image roots are served")
        if not path.is_absolute():
            if self.base is None:
                raise ApiError(404, f"image path {image_path!r} is relative and this index has no base folder")
            path = self.base / path
        real = Path(os.path.realpath(path))
        if not any(real == root or root in real.parents for root in self.roots):
            raise ApiError(403, f"image {image_path!r} lies outside the indexed roots; it is not served")
        if real.suffix.lower() not in IMAGE_TYPES:
            raise ApiError(403, f"{image_path!r} has no image extension ({', '.join(sorted(IMAGE_TYPES))})")
        try:
            mode = os.stat(real).st_mode
        except OSError:
            raise ApiError(404, f"image {image_path!r} no longer exists") from None
        if not stat.S_ISREG(mode):
            raise ApiError(403, f"image {image_path!r} is not a regular file; it is not served")
        return real


def _roots(layout: IndexLayout, info: dict[str, Any], extra: tuple[str, ...]) -> tuple[tuple[Path, ...], Path | None]:
    source = info.get("source") if isinstance(info.get("source"), dict) else {}
    kind, location = source.get("kind"), source.get("location")
    base: Path | None = None
    if isinstance(location, str) and kind == "folder":
        base = Path(location)
    elif isinstance(location, str) and kind == "csv":
        base = Path(location).parent
    roots = ([base] if base is not None else []) + [Path(p) for p in extra]
    real = tuple(dict.fromkeys(Path(os.path.realpath(p)) for p in roots if os.path.isdir(p)))
    return real, base


def open_indices(indices: dict[str, str | os.PathLike], config: ServiceConfig) -> dict[str, ServedIndex]:
    """Open every INDEX_DIR of `indices` ({name: path}); ValueError naming the index when one cannot be served."""
    if not indices:
        raise ValueError("no index to serve; give at least one INDEX_DIR")
    served: dict[str, ServedIndex] = {}
    for name, root in indices.items():
        if not isinstance(name, str) or not NAME.match(name):
            raise ValueError(
                f"index name {name!r}: use 1-64 letters, digits, '_', '.' or '-' (starting with a letter or digit)"
            )
        searcher = Searcher(root, device=config.device)
        layout = searcher.layout
        modalities = tuple(m for m in ("image", "text") if layout.index_path(m).exists())
        if not modalities:
            raise ValueError(f"{root}: no image.index or text.index; build it with `clipforge index build`")
        searcher.warm_up(modalities)
        rows = int(searcher.index(modalities[0]).ntotal)
        deleted = frozenset(int(i) for i in layout.deleted_ids().tolist())  # not the text index's uncaptioned rows
        roots, base = _roots(layout, searcher.info, config.image_roots)
        entry = ServedIndex(name, searcher, modalities, roots, base, deleted, rows)
        if not (searcher.info.get("model") or {}):
            entry.model_error = "no model is recorded in its info.json; query it by embedding or by id"
        elif config.preload_model:
            try:
                entry.encoder()
            except ApiError:
                pass  # model_error says why; id and embedding queries still work
        served[name] = entry
        log.info("serving %s (%s): %d rows, %s", name, root, rows, ", ".join(modalities))
    return served
