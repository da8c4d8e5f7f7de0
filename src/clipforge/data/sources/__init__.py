"""Data sources, one module per kind; `build_source` makes the one a SourceConfig describes."""

from __future__ import annotations

from typing import Any

from ..config import SourceConfig
from .base import FileListSource, MapSource, TensorSource
from .collection import CollectionSource
from .fashion import FashionMnistSource
from .folder import FolderSource
from .table import CsvSource
from .tuxpaint import TuxPaintSource
from .webdataset import WdsSource


def build_source(cfg: SourceConfig) -> Any:
    """The source object for `cfg`: a MapSource, a TensorSource (fashion_mnist) or a WdsSource."""
    if cfg.kind == "fashion_mnist":
        return FashionMnistSource(cfg.split, cfg.path, cfg.templates)
    if cfg.kind == "tuxpaint":
        return TuxPaintSource(cfg.path)
    if cfg.kind == "csv":
        return CsvSource(cfg.path, cfg.image_column, cfg.caption_column, cfg.separator, encoding=cfg.encoding)
    if cfg.kind == "folder":
        return FolderSource(cfg.path)
    if cfg.kind in ("openclipart", "emoji"):
        return CollectionSource(cfg.kind, cfg.path)
    return WdsSource(cfg.path, cfg.shuffle_buffer)


__all__ = [
    "CollectionSource",
    "CsvSource",
    "FashionMnistSource",
    "FileListSource",
    "FolderSource",
    "MapSource",
    "TensorSource",
    "TuxPaintSource",
    "WdsSource",
    "build_source",
]
