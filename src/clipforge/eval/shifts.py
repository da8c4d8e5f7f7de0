"""Deterministic distribution shifts of an evaluation set's images: out-of-distribution test data, offline.

Robustness studies (WiSE-FT, Wortsman et al. 2022) report accuracy under distribution shift beside the
in-distribution accuracy. The shifts they use (ImageNet-V2, -R, -Sketch, ObjectNet, -A) must be downloaded;
the corruptions here follow ImageNet-C (Hendrycks & Dietterich 2019) and its sketch/product-photo relatives
and apply to any local `ClassificationSet`, so a shifted test set costs nothing to obtain. Each shift is a
fixed function of the image (and, for `noise`, of the item's index), applied to the decoded RGB image before
the model's own preprocessing:

    invert       255 - x on every channel: dark garments on white, as in product photos (Fashion-MNIST's
                 images are light on black).
    rotate90     a quarter turn counter-clockwise (np.rot90): the objects' orientation changes.
    noise        additive Gaussian noise, sigma = 0.12 of the 0..255 range (ImageNet-C gaussian_noise,
                 severity 2), from a generator seeded by (NOISE_SEED, item row): the same pixels every run.
    blur         Gaussian blur, radius 2% of the shorter side and at least 1 pixel, so the blur is the same
                 share of the image at 28 or 224 pixels.
    lowcontrast  x -> mean + 0.3 (x - mean), with the image's mean over all pixels and channels
                 (ImageNet-C contrast, severity 2).

`shift_dataset(dataset, name)` wraps a set (or a view of one) in `ShiftedView`, whose `fingerprint` carries
the shift name: the feature cache (eval/features.py keys on the fingerprint) can never serve a shifted set the
clean set's features. Pixel values are rounded and clipped back to uint8 RGB, as a shifted image saved to disk
would be.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

from .items import base_rows
from .splits import RowsView

NOISE_SEED = 0  # the per-image generators of `noise` are seeded by (NOISE_SEED, row): fixed, documented
NOISE_SIGMA = 0.12  # of the 0..255 range
BLUR_FRACTION = 0.02  # blur radius as a share of the shorter side
CONTRAST_FACTOR = 0.3


def _rgb_array(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.uint8)  # (H, W, 3)


def _to_image(values: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), mode="RGB")


def invert(image: Image.Image, row: int) -> Image.Image:
    """255 - x on every channel (light-on-dark becomes dark-on-light)."""
    return Image.fromarray(255 - _rgb_array(image), mode="RGB")


def rotate90(image: Image.Image, row: int) -> Image.Image:
    """A quarter turn counter-clockwise, exactly np.rot90 of the (H, W, 3) array."""
    return Image.fromarray(np.ascontiguousarray(np.rot90(_rgb_array(image))), mode="RGB")


def noise(image: Image.Image, row: int) -> Image.Image:
    """x + N(0, (NOISE_SIGMA * 255)^2) per pixel and channel, seeded by (NOISE_SEED, row), rounded and clipped."""
    pixels = _rgb_array(image).astype(np.float64)
    rng = np.random.default_rng([NOISE_SEED, int(row)])
    return _to_image(pixels + rng.normal(0.0, NOISE_SIGMA * 255.0, size=pixels.shape))


def blur(image: Image.Image, row: int) -> Image.Image:
    """Gaussian blur of radius max(1, BLUR_FRACTION * shorter side) pixels."""
    radius = max(1.0, BLUR_FRACTION * min(image.size))
    return image.convert("RGB").filter(ImageFilter.GaussianBlur(radius))


def lowcontrast(image: Image.Image, row: int) -> Image.Image:
    """mean + CONTRAST_FACTOR * (x - mean), the mean taken over the whole image, rounded."""
    pixels = _rgb_array(image).astype(np.float64)
    mean = pixels.mean()
    return _to_image(mean + CONTRAST_FACTOR * (pixels - mean))


SHIFTS: dict[str, Callable[[Image.Image, int], Image.Image]] = {
    "invert": invert,
    "rotate90": rotate90,
    "noise": noise,
    "blur": blur,
    "lowcontrast": lowcontrast,
}


def list_shifts() -> list[str]:
    """The shift names `shift_dataset` accepts, in the order documented above."""
    return list(SHIFTS)


def check_shift(name: str) -> str:
    """`name` when it is a known shift; else ValueError listing them."""
    if name not in SHIFTS:
        raise ValueError(f"unknown distribution shift {name!r}; known shifts: {', '.join(SHIFTS)}")
    return name


class ShiftedView(RowsView):
    """Every item of `dataset` with the shift `name` applied to its image; same labels, classes and templates.

    The view's split reads "SPLIT+SHIFT" in reports, and its fingerprint adds ":shift=NAME" (the cache key).
    Item i's `noise` generator is seeded by the row of the underlying set it comes from, so a subset of a
    shifted set and a shifted subset hold the same noisy pixels for the same image.
    """

    def __init__(self, dataset: Any, name: str) -> None:
        self.shift = check_shift(name)
        super().__init__(
            dataset,
            list(range(len(dataset))),
            f"{dataset.fingerprint}:shift={name}",
            split=f"{dataset.split}+{name}",
        )
        rows = base_rows(dataset)[1]
        self._seed_rows = rows if rows is not None else list(range(len(dataset)))

    def load(self, index: int) -> Image.Image:
        """Item `index` of the wrapped set, shifted (ImageLoadError from the wrapped set passes through)."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"{self.name}: index {index} out of range for {len(self)} images")
        index %= len(self)
        return SHIFTS[self.shift](self.dataset.load(index), self._seed_rows[index])


def shift_dataset(dataset: Any, name: str | None) -> Any:
    """`dataset` seen through the shift `name` (a ShiftedView); None returns `dataset` itself."""
    if name is None:
        return dataset
    return ShiftedView(dataset, name)
