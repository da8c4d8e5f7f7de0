"""Tux Paint stamps as a source: real cut-out photos and drawings with English captions (builtins.py)."""

from __future__ import annotations

from ..builtins import TUXPAINT_ROOT, load_tuxpaint_pairs
from .base import FileListSource


class TuxPaintSource(FileListSource):
    """The stamps under `root`; RGBA images are composited on white by load_image when decoded."""

    def __init__(self, root: str | None = None) -> None:
        root = root or TUXPAINT_ROOT
        super().__init__(root, [(path, caption) for path, caption, _ in load_tuxpaint_pairs(root)])
