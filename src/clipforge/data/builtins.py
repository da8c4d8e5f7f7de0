"""Built-in datasets that install offline from Debian packages: Fashion-MNIST and the Tux Paint stamps.

Fashion-MNIST (Xiao et al. 2017, https://arxiv.org/abs/1708.07747; Debian `dataset-fashion-mnist`) has 60,000
train and 10,000 test 28x28 grey images in 10 classes, stored as gzipped IDX files. Its class names are not in
the files; FASHION_MNIST_CLASSES gives natural names for captions. Captions for training come from
FASHION_TRAIN_TEMPLATES; FASHION_TEST_TEMPLATES are different prompts, never used for training captions, so a
zero-shot evaluation with them does not test memorised strings.

The Tux Paint stamps (Debian `tuxpaint-stamps-default`) pair NAME.png with NAME.txt, whose first line is an
English caption ("A koala."); the top-level folder is a coarse class (animals, food, vehicles, ...).
"""

from __future__ import annotations

import gzip
import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from clipforge.models.config import PreprocessConfig

from .greyscale import grey_to_model_input

FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
TUXPAINT_ROOT = "/usr/share/tuxpaint/stamps"
FASHION_MNIST_INSTALL = "apt-get install -y dataset-fashion-mnist"
TUXPAINT_INSTALL = "apt-get install -y --no-install-recommends tuxpaint-stamps-default"

FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
)
# "the {}" reads well for every class name ("a ankle boot" would not).
FASHION_TRAIN_TEMPLATES: tuple[str, ...] = (
    "a photo of the {}.",
    "a picture of the {}.",
    "the {}.",
    "a grey photo of the {}.",
    "an image showing the {}.",
    "the {}, photographed on a dark background.",
    "a small photo of the {}.",
    "{}",
)
FASHION_TEST_TEMPLATES: tuple[str, ...] = (
    "a black and white photo of the {}.",
    "a low resolution photo of the {}.",
    "a product shot of the {}.",
    "a cropped photo of the {}.",
    "this is the {}.",
)

_SPLIT_FILES = {"train": "train", "test": "t10k"}


def _read_idx(path: Path, header: int) -> np.ndarray:
    with gzip.open(path, "rb") as file:
        data = file.read()
    return np.frombuffer(data, dtype=np.uint8, offset=header)


@lru_cache(maxsize=4)
def _load_fashion(split: str, root: str) -> tuple[np.ndarray, np.ndarray]:
    prefix = _SPLIT_FILES[split]
    images_path = Path(root) / f"{prefix}-images-idx3-ubyte.gz"
    labels_path = Path(root) / f"{prefix}-labels-idx1-ubyte.gz"
    missing = [str(p) for p in (images_path, labels_path) if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST is not installed: missing {', '.join(missing)}; install it with "
            f"`{FASHION_MNIST_INSTALL}` (Debian/Ubuntu, after apt-get update)"
        )
    labels = _read_idx(labels_path, 8).astype(np.int64)  # (N,)
    images = _read_idx(images_path, 16).reshape(-1, 28, 28)  # (N, 28, 28) uint8, read-only
    if len(images) != len(labels):
        raise ValueError(f"Fashion-MNIST {split}: {len(images)} images but {len(labels)} labels under {root}")
    labels.flags.writeable = False
    return images, labels


def load_fashion_mnist(
    split: str = "train", root: str = FASHION_MNIST_ROOT
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Fashion-MNIST's images (N, 28, 28) uint8, labels (N,) int64 and the 10 class names.

    Args:
        split: "train" (60,000) or "test" (10,000).
        root: folder of the four IDX .gz files (the Debian package's location by default).

    The arrays are read once per process and shared (read-only). A missing install raises FileNotFoundError
    naming the apt-get command.
    """
    if split not in _SPLIT_FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    images, labels = _load_fashion(split, os.fspath(root))
    return images, labels, list(FASHION_MNIST_CLASSES)


def fashion_mnist_eval_set(
    preprocess_cfg: PreprocessConfig, root: str = FASHION_MNIST_ROOT, limit: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """The test split preprocessed for zero-shot evaluation: images (N, 3, S, S) float32, labels (N,), class names.

    The pixels equal `EvalTransform(preprocess_cfg)` applied to each image (a square image: resize to S, no
    crop), computed in batches without PIL. Memory is N * 3 * S * S * 4 bytes (10,000 images at S=224: 6 GB);
    `limit` keeps the first images only.
    """
    images, labels, classes = load_fashion_mnist("test", root)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    out = torch.empty((len(images), 3, preprocess_cfg.size, preprocess_cfg.size), dtype=torch.float32)
    for start in range(0, len(images), 1024):
        out[start : start + 1024] = grey_to_model_input(images[start : start + 1024], preprocess_cfg)
    return out, torch.from_numpy(labels.copy()), classes


def load_tuxpaint_pairs(root: str = TUXPAINT_ROOT) -> list[tuple[str, str, str]]:
    """(image path, caption, coarse class) for every Tux Paint stamp with a PNG image and an English caption.

    The caption is the first line of NAME.txt (its other lines are translations); the coarse class is the
    top-level folder under `root`. Stamps drawn only as SVG, and *_mirror / *_back variants (which have no text
    file of their own), are not listed. Sorted by path.
    """
    base = Path(root)
    if not base.is_dir():
        raise FileNotFoundError(
            f"Tux Paint stamps are not installed under {root}; install them with `{TUXPAINT_INSTALL}`"
        )
    pairs = []
    for text_path in sorted(base.rglob("*.txt")):
        image_path = text_path.with_suffix(".png")
        if not image_path.is_file():
            continue
        with open(text_path, encoding="utf-8", errors="replace") as file:
            caption = file.readline().strip().lstrip("\ufeff").strip()
        if not caption:
            continue
        parts = text_path.relative_to(base).parts
        coarse = parts[0] if len(parts) > 1 else ""
        pairs.append((str(image_path), caption, coarse))
    return pairs
