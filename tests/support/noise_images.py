"""Seeded noise images and image folders for evaluation tests: no class signal, so a probe can only memorise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def write_noise_image(path: Path, seed: int, size: int = 32) -> Path:
    """A seeded RGB noise PNG at `path` (no class signal: a probe can only memorise it)."""
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def write_noise_folder(root: Path, classes: int, per_class: int, seed: int = 0) -> list[Path]:
    """root/class_K/img_I.png noise images (an ImageFolder tree); their paths, class by class."""
    paths = []
    for c in range(classes):
        for i in range(per_class):
            paths.append(write_noise_image(root / f"class_{c}" / f"img_{i:03d}.png", seed * 100_000 + c * 1000 + i))
    return paths
