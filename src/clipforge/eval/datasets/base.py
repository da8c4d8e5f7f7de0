"""The two evaluation set types, the error for a missing dataset, and the image sources behind `load(i)`.

A `ClassificationSet` (images, integer labels, class names, prompt templates) feeds zero-shot classification and
linear probes; a `RetrievalSet` (images, one or more captions each) feeds image-text retrieval. Both are frozen
dataclasses holding metadata only: the pixels are read on demand by `load(i)` through a small picklable image
source (so a torch DataLoader with workers can carry them), always via `clipforge.image.load_image`, so a bad file
fails as `ImageLoadError` naming it. `fingerprint` identifies (name, split, root, item list) for caching
embeddings: the same files give the same fingerprint in any process, a changed file list a different one.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from PIL import Image

from clipforge.image import load_image


class DatasetNotFound(FileNotFoundError):
    """An evaluation dataset is not where it was looked for; the message gives the expected layout."""

    def __init__(self, name: str, path: str | os.PathLike | None, layout: str, install: str | None = None):
        where = os.fspath(path) if path is not None else "<no root given: pass root=...>"
        message = f"evaluation dataset {name!r} not found at {where}; expected layout: {layout}"
        if install:
            message += f"; install it with `{install}`"
        super().__init__(message)
        self.name, self.path, self.layout, self.install = name, where, layout, install


class ImageSource(Protocol):
    """A callable returning image `i` of a dataset as a PIL image."""
    def __call__(self, i: int) -> Image.Image: ...


@dataclass(frozen=True)
class PathImages:
    """Images stored as files, one path each."""

    paths: tuple[str, ...]

    def __call__(self, i: int) -> Image.Image:
        return load_image(self.paths[i])


@dataclass(frozen=True)
class ArrayImages:
    """Images held in one uint8 array: (N, H, W) grey or (N, H, W, 3) RGB."""

    array: np.ndarray = field(repr=False)
    name: str = "array"

    def __call__(self, i: int) -> Image.Image:
        return load_image(Image.fromarray(np.ascontiguousarray(self.array[i])), name=f"{self.name}[{i}]")


def fingerprint(name: str, split: str, root: str | os.PathLike, items: Iterable[str]) -> str:
    """A 16-hex-digit id of (dataset name, split, resolved root, item identifiers in order)."""
    digest = hashlib.sha256()
    where = os.fspath(root)
    head = json.dumps([name, split, where if "://" in where else os.path.abspath(where)])
    digest.update(head.encode("utf-8"))
    for item in items:
        digest.update(b"\0" + item.encode("utf-8", "surrogateescape"))
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class ClassificationSet:
    """Images with one integer label each, the class names and the prompt templates for zero-shot classification.

    Fields:
        name, split: the dataset's registered name and the split ("test", "train", ...).
        classnames: natural-language class names, indexed by label.
        templates: prompt templates with one "{}" for the class name (the CLIP paper's for its datasets).
        labels: the label of each image, in 0 .. len(classnames) - 1.
        fingerprint: stable id of (name, split, root, file list) for caching embeddings.
        images: the source `load(i)` reads from (not part of equality).
    """

    name: str
    split: str
    classnames: tuple[str, ...]
    templates: tuple[str, ...]
    labels: tuple[int, ...]
    fingerprint: str
    images: ImageSource = field(repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.classnames:
            raise ValueError(f"{self.name}: no class names")
        bad = [t for t in self.templates if not isinstance(t, str) or t.count("{}") != 1]
        if not self.templates or bad:
            raise ValueError(f"{self.name}: templates need exactly one '{{}}' each; bad: {bad[:3]}")
        if self.labels and not 0 <= min(self.labels) <= max(self.labels) < len(self.classnames):
            raise ValueError(f"{self.name}: labels must lie in 0..{len(self.classnames) - 1}")

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, i: int) -> Image.Image:
        """Image `i` as upright RGB; ImageLoadError for a corrupt file, IndexError past the end."""
        if not -len(self) <= i < len(self):
            raise IndexError(f"{self.name}: index {i} out of range for {len(self)} images")
        return self.images(i % len(self))


@dataclass(frozen=True)
class RetrievalSet:
    """Images with one or more captions each, for image-to-text and text-to-image retrieval.

    Fields:
        name, split: the dataset's registered name and the split.
        captions: the captions of each image (at least one each).
        fingerprint: stable id of (name, split, root, file list) for caching embeddings.
        images: the source `load(i)` reads from (not part of equality).
    """

    name: str
    split: str
    captions: tuple[tuple[str, ...], ...]
    fingerprint: str
    images: ImageSource = field(repr=False, compare=False)

    def __post_init__(self) -> None:
        empty = [i for i, caps in enumerate(self.captions) if not caps]
        if empty:
            raise ValueError(f"{self.name}: images without captions at {empty[:5]}")

    def __len__(self) -> int:
        return len(self.captions)

    def load(self, i: int) -> Image.Image:
        """Image `i` as upright RGB; ImageLoadError for a corrupt file, IndexError past the end."""
        if not -len(self) <= i < len(self):
            raise IndexError(f"{self.name}: index {i} out of range for {len(self)} images")
        return self.images(i % len(self))


def check_split(name: str, split: str, valid: Sequence[str]) -> None:
    """Raise a ValueError naming the dataset and its valid splits when `split` is not one of them."""
    if split not in valid:
        raise ValueError(f"{name}: split must be one of {list(valid)}, got {split!r}")


def readable_name(folder_name: str) -> str:
    """A folder name as a class name: "_" and "-" become spaces ("golden_retriever" -> "golden retriever")."""
    return " ".join(folder_name.replace("_", " ").replace("-", " ").split())


def load_data(name: str) -> dict:
    """A JSON file shipped in this package's data/ folder."""
    from importlib import resources

    return json.loads((resources.files("clipforge.eval.datasets") / "data" / name).read_text(encoding="utf-8"))
