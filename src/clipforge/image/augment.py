"""Train-time augmentation for CLIP: random resized crop, optional colour jitter and random grayscale.

The recipe is open_clip's default train transform (a RandomResizedCrop with scale (0.9, 1.0), then the optional
SimCLR-style colour jitter and grayscale, Chen et al. 2020, https://arxiv.org/abs/2002.05709), without
torchvision. Crop sampling follows torchvision's RandomResizedCrop.get_params (ten tries at an area fraction in
`scale` and a log-uniform aspect ratio in `ratio`, then a centre crop clamped to `ratio`); jitter follows
ColorJitter (factors uniform in [max(0, 1 - s), 1 + s], hue shift in [-h, h], the four in random order).

Every random draw comes from one torch.Generator, so a transform given a seeded generator is deterministic.
In DataLoader workers pass generator=None: each worker's global torch RNG is seeded differently, whereas a
generator object is copied into every worker with the same state and would repeat the same augmentations.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageEnhance

from clipforge.models.config import ConfigError, PreprocessConfig

from .convert import WHITE, Background, parse_background, to_rgb
from .resize_guard import DEFAULT_MAX_RESIZE_PIXELS, check_resize, image_label
from .tensor import RESAMPLE, Normalizer


@dataclass(frozen=True)
class AugmentConfig:
    """Train augmentation options.

    Fields:
        scale: range of the crop's area as a fraction of the image's (open_clip's default (0.9, 1.0)).
        ratio: range of the crop's aspect ratio width / height, sampled log-uniformly.
        color_jitter: (brightness, contrast, saturation, hue) strengths as in torchvision's ColorJitter
            (hue at most 0.5); None disables jitter.
        color_jitter_prob: probability that an image is jittered when color_jitter is set (SimCLR used 0.8).
        grayscale_prob: probability that an image is turned grey (three equal channels).
    """

    scale: tuple[float, float] = (0.9, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    color_jitter: tuple[float, float, float, float] | None = None
    color_jitter_prob: float = 1.0
    grayscale_prob: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale", tuple(float(v) for v in self.scale))
        object.__setattr__(self, "ratio", tuple(float(v) for v in self.ratio))
        if len(self.scale) != 2 or not 0.0 < self.scale[0] <= self.scale[1] <= 1.0:
            raise ConfigError(f"augment scale must be (lo, hi) with 0 < lo <= hi <= 1, got {self.scale}")
        if len(self.ratio) != 2 or not 0.0 < self.ratio[0] <= self.ratio[1]:
            raise ConfigError(f"augment ratio must be (lo, hi) with 0 < lo <= hi, got {self.ratio}")
        if self.color_jitter is not None:
            jitter = tuple(float(v) for v in self.color_jitter)
            object.__setattr__(self, "color_jitter", jitter)
            if len(jitter) != 4 or min(jitter) < 0.0 or jitter[3] > 0.5:
                raise ConfigError(
                    "augment color_jitter must be four non-negative strengths (brightness, contrast, saturation, "
                    f"hue <= 0.5), got {self.color_jitter}"
                )
        for name in ("color_jitter_prob", "grayscale_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"augment {name} must be in [0, 1], got {getattr(self, name)}")

    @classmethod
    def from_options(cls, **options: Any) -> AugmentConfig:
        """Build from keyword options; unknown names are an error listing the valid ones."""
        names = sorted(f.name for f in dataclasses.fields(cls))
        unknown = sorted(set(options) - set(names))
        if unknown:
            raise ConfigError(f"unknown train option(s) {unknown}; valid options: {names}")
        return cls(**options)


def random_resized_crop_box(
    width: int,
    height: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator | None = None,
) -> tuple[int, int, int, int]:
    """Sample a crop (left, top, crop_width, crop_height) as torchvision's RandomResizedCrop.get_params does."""
    area = width * height
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target_area = area * _uniform(scale[0], scale[1], generator)
        aspect = math.exp(_uniform(log_lo, log_hi, generator))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
            return left, top, w, h
    # No sample fitted (an extreme aspect ratio): the largest centred crop within `ratio`.
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        w, h = int(round(height * ratio[1])), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def _uniform(lo: float, hi: float, generator: torch.Generator | None) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=generator))


def _chance(p: float, generator: torch.Generator | None) -> bool:
    return p > 0.0 and float(torch.rand((), generator=generator)) < p


def color_jitter(
    image: Image.Image, strengths: tuple[float, float, float, float], generator: torch.Generator | None = None
) -> Image.Image:
    """Random brightness, contrast, saturation and hue changes of an RGB image, applied in a random order."""
    brightness, contrast, saturation, hue = strengths
    factors = [
        _uniform(max(0.0, 1.0 - s), 1.0 + s, generator) if s > 0 else None for s in (brightness, contrast, saturation)
    ]
    hue_shift = _uniform(-hue, hue, generator) if hue > 0 else None
    enhancers = (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color)
    for index in torch.randperm(4, generator=generator).tolist():
        if index < 3 and factors[index] is not None:
            image = enhancers[index](image).enhance(factors[index])
        elif index == 3 and hue_shift is not None:
            image = shift_hue(image, hue_shift)
    return image


def shift_hue(image: Image.Image, shift: float) -> Image.Image:
    """Rotate hues by `shift` turns of the colour circle (in [-0.5, 0.5]), as torchvision's adjust_hue on PIL."""
    h, s, v = image.convert("HSV").split()
    hue = np.array(h, dtype=np.uint8)  # (H, W), a full turn is 256
    hue += np.uint8(int(shift * 255) % 256)  # uint8 arithmetic wraps around the circle
    return Image.merge("HSV", (Image.fromarray(hue), s, v)).convert("RGB")


class TrainTransform:
    """Augmenting preprocessing: PIL image (any mode) -> float32 tensor (3, cfg.size, cfg.size).

    Args:
        cfg: output size, normalisation and resize filter (resize_mode and fill_color do not apply: the
            random crop is always resized to a square).
        aug: crop, jitter and grayscale options.
        generator: source of every random draw; None uses torch's global RNG (right for DataLoader workers).
        background: what transparent pixels are composited over (see convert.to_rgb).
    """

    def __init__(
        self,
        cfg: PreprocessConfig,
        aug: AugmentConfig | None = None,
        *,
        generator: torch.Generator | None = None,
        background: Background = WHITE,
    ) -> None:
        self.cfg = cfg
        self.aug = aug or AugmentConfig()
        self.generator = generator
        self.background = parse_background(background)
        self.resample = RESAMPLE[cfg.interpolation]
        self.normalize = Normalizer(cfg.mean, cfg.std)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        if not isinstance(image, Image.Image):
            raise TypeError(f"TrainTransform takes a PIL image, got {type(image).__name__}; use load_image for files")
        size, aug, gen = self.cfg.size, self.aug, self.generator
        image = to_rgb(image, self.background)
        left, top, w, h = random_resized_crop_box(image.width, image.height, aug.scale, aug.ratio, gen)
        # The output is size x size whatever the crop, and Pillow's intermediate (one pass over the crop's rows or
        # columns) is at most size x the crop's long side; the guard makes that bound explicit for any size.
        check_resize((w, h), (size, size), DEFAULT_MAX_RESIZE_PIXELS, label=image_label(image))
        # Crop and resize in one step: Pillow's box argument also lets the filter see just outside the crop.
        image = image.resize((size, size), self.resample, box=(left, top, left + w, top + h))
        if aug.color_jitter is not None and _chance(aug.color_jitter_prob, gen):
            image = color_jitter(image, aug.color_jitter, gen)
        if _chance(aug.grayscale_prob, gen):
            image = image.convert("L").convert("RGB")
        return self.normalize(image)  # (3, size, size)

    def __repr__(self) -> str:
        return f"TrainTransform(size={self.cfg.size}, interpolation={self.cfg.interpolation!r}, aug={self.aug})"
