"""What the map-style (random-access) sources provide, and the common case of a list of image files.

A map-style source has a length and `read(index) -> RawSample` (an image path or bytes plus a caption, not yet
decoded); an item that is unusable before decoding (no caption, empty caption) raises `BadSample` named after
its file. Decoding, augmentation and replacing bad samples are the batch assembler's job (assemble.py).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import torch
from PIL import Image

from clipforge.models.config import PreprocessConfig

from ..bad import BadSample
from ..tarsamples import RawSample


class MapSource(ABC):
    """A finite, random-access collection of (image, caption) samples."""

    #: what the source is called in messages (its file, folder or dataset name)
    name: str

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def read(self, index: int) -> RawSample:
        """Sample `index` (0 <= index < len(self)), undecoded; BadSample if it is unusable."""


class FileListSource(MapSource):
    """Samples from a list of (image path, caption or None) held in memory."""

    def __init__(self, name: str, pairs: list[tuple[str, str | None]]) -> None:
        self.name = name
        self.paths = [path for path, _ in pairs]
        self.captions = [caption for _, caption in pairs]

    def __len__(self) -> int:
        return len(self.paths)

    def read(self, index: int) -> RawSample:
        path, caption = self.paths[index], self.captions[index]
        if caption is None:
            raise BadSample(path, "missing caption")
        caption = caption.strip()
        if not caption:
            raise BadSample(path, "empty caption")
        return RawSample(image=path, caption=caption, name=path, label=path)


class TensorSource(ABC):
    """A map-style source that builds the tensors of many samples at once and has no bad samples.

    Its captions come from a small fixed table (class names in templates), so the assembler tokenizes the table
    once and gathers rows; images are built as one tensor for a whole batch (`images`), or one PIL image at a
    time (`pil_image`) when the transform is not a clipforge one whose PreprocessConfig could be read.
    """

    name: str
    #: every caption this source can produce; `caption_ids` indexes into it
    caption_table: list[str]

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def images(self, indices: np.ndarray, cfg: PreprocessConfig) -> torch.Tensor:
        """(n, 3, S, S) float32 model input for the samples `indices`, as EvalTransform(cfg) would give."""

    @abstractmethod
    def pil_image(self, index: int) -> Image.Image:
        """Sample `index` as a PIL image, so it goes through the same preprocessing as files."""

    @abstractmethod
    def caption_ids(self, indices: np.ndarray, seeds: np.ndarray) -> np.ndarray:
        """(n,) rows of caption_table for the samples `indices`, each choice made from the slot's uint64 seed."""
