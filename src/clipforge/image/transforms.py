"""Eval preprocessing for CLIP models, pixel-exact with open_clip, and the `build_transform` entry point.

`EvalTransform(cfg)` maps a PIL image to the float tensor (3, size, size) a model takes, following a
`PreprocessConfig` (models/config.py). It reproduces open_clip 3.3.0's `image_transform(..., is_train=False)`
(open_clip/transform.py, built on torchvision's PIL code paths) with Pillow, numpy and torch only, down to the
rounding of every size and offset:

    shortest: short side -> size, long side int(size * long / short) (truncated), then a centre crop at
              int(round((side - size) / 2)) (Python's round: halves go to even).
    longest:  both sides scaled by 1 / max(w / size, h / size) and round()ed, then padded with fill_color,
              (size - side) // 2 before and (size - side + 1) // 2 after.
    squash:   both sides resized to size.

Each resize is one Pillow `Image.resize` with the configured filter (antialiased for bilinear and bicubic, as
torchvision does on PIL images); the uint8 -> float conversion is in tensor.py. On RGB inputs, and on grey
("L") and fully opaque RGBA inputs, the output equals open_clip's exactly (tests/image/test_image_parity.py).

Where clipforge deliberately differs: non-RGB images are first converted by `convert.to_rgb`, before any
resizing, whereas open_clip resizes in the image's own mode and calls `convert("RGB")` last. So transparent
images are composited over white (open_clip drops alpha after a premultiplied resize, showing whatever colour
hides under alpha 0); palette ("P") and 1-bit images are resized with the configured filter (Pillow silently
uses nearest-neighbour for those modes, so open_clip does too); 16-bit and float images are rescaled instead of
clipped; CMYK and YCbCr images are resized after conversion to RGB, not before (a few grey levels apart).
"nearest" interpolation, which open_clip rejects, is torchvision's NEAREST on the same geometry. A resize that
would make a side 0 (aspect ratios beyond size:1 in "longest" mode) keeps it at 1 pixel, where open_clip raises.
A resize whose output would exceed `max_resize_pixels` (extreme aspect ratios in "shortest" mode: a 1 x 100,000
image would become 224 x 22,400,000) raises ImageAspectError before allocating, where open_clip runs out of memory.
EXIF orientation is not applied here (nor by open_clip): `load_image` applies it when reading files.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from PIL import Image

from clipforge.models.config import PreprocessConfig, ResizeMode

from .augment import AugmentConfig, TrainTransform
from .convert import WHITE, Background, parse_background, to_rgb
from .loading import DEFAULT_MAX_PIXELS, ImageSource, load_image
from .resize_guard import DEFAULT_MAX_RESIZE_PIXELS, check_resize, image_label
from .tensor import RESAMPLE, Normalizer


def resized_size(width: int, height: int, size: int, resize_mode: ResizeMode) -> tuple[int, int]:
    """The (width, height) an image is resized to before cropping or padding, as open_clip computes it."""
    if resize_mode == "squash":
        return size, size
    if resize_mode == "shortest":
        # torchvision Resize(int): the long side is truncated, not rounded.
        if width <= height:
            return size, int(size * height / width)
        return int(size * width / height), size
    # "longest": open_clip's ResizeKeepRatio(longest=1) rounds each side with Python's round().
    ratio = max(height / size, width / size)
    return max(1, round(width / ratio)), max(1, round(height / ratio))


def center_crop_or_pad(image: Image.Image, size: int, fill: int = 0) -> Image.Image:
    """Pad (with grey level `fill`) to at least size x size, then crop the centre size x size.

    Offsets follow torchvision's center_crop / open_clip's center_crop_or_pad: padding splits with the odd pixel
    after; the crop starts at int(round((side - size) / 2)).
    """
    width, height = image.size
    if size > width or size > height:
        left, top = max(0, (size - width) // 2), max(0, (size - height) // 2)
        right, bottom = max(0, (size - width + 1) // 2), max(0, (size - height + 1) // 2)
        padded = Image.new(image.mode, (width + left + right, height + top + bottom), _fill_value(image.mode, fill))
        padded.paste(image, (left, top))
        image, (width, height) = padded, padded.size
        if (width, height) == (size, size):
            return image
    top = int(round((height - size) / 2.0))
    left = int(round((width - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


def _fill_value(mode: str, fill: int) -> int | tuple[int, ...]:
    return (fill,) * len(mode) if mode in ("RGB", "RGBA") else fill


class EvalTransform:
    """Deterministic preprocessing: PIL image (any mode) -> float32 tensor (3, cfg.size, cfg.size).

    Args:
        cfg: size, normalisation, filter, resize mode and padding colour.
        background: what transparent pixels are composited over (see convert.to_rgb); white by default.
        max_resize_pixels: refuse (ImageAspectError) an image whose resize before the crop would make more pixels
            than this: see resize_guard.py; None disables the guard (trusted inputs only).
    """

    def __init__(
        self,
        cfg: PreprocessConfig,
        background: Background = WHITE,
        *,
        max_resize_pixels: int | None = DEFAULT_MAX_RESIZE_PIXELS,
    ) -> None:
        if max_resize_pixels is not None and max_resize_pixels < cfg.size * cfg.size:
            raise ValueError(f"max_resize_pixels must be at least size**2 = {cfg.size**2} or None")
        self.cfg = cfg
        self.background = parse_background(background)
        self.max_resize_pixels = max_resize_pixels
        self.resample = RESAMPLE[cfg.interpolation]
        self.normalize = Normalizer(cfg.mean, cfg.std)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        if not isinstance(image, Image.Image):
            raise TypeError(f"EvalTransform takes a PIL image, got {type(image).__name__}; use load_image for files")
        size = self.cfg.size
        target = resized_size(image.width, image.height, size, self.cfg.resize_mode)
        # Checked first, before even the mode conversion: nothing is allocated for an image that is refused.
        check_resize(
            image.size, target, self.max_resize_pixels, label=image_label(image), remedy=", or use resize_mode "
            "'longest' (pad) or 'squash', or raise EvalTransform(..., max_resize_pixels=...) for trusted inputs"
        )
        image = to_rgb(image, self.background)
        if target != image.size:
            image = image.resize(target, self.resample)
        if self.cfg.resize_mode != "squash":
            image = center_crop_or_pad(image, size, self.cfg.fill_color)
        return self.normalize(image)  # (3, size, size)

    def __repr__(self) -> str:
        c = self.cfg
        return (
            f"EvalTransform(size={c.size}, resize_mode={c.resize_mode!r}, interpolation={c.interpolation!r}, "
            f"fill_color={c.fill_color}, mean={c.mean}, std={c.std}, background={self.background})"
        )


def build_transform(
    cfg: PreprocessConfig,
    train: bool = False,
    *,
    background: Background = WHITE,
    generator: torch.Generator | None = None,
    **train_options: Any,
) -> EvalTransform | TrainTransform:
    """The preprocessing for a model: `EvalTransform(cfg)`, or with train=True a `TrainTransform`.

    Args:
        cfg: the model's PreprocessConfig.
        train: build the augmenting train transform instead of the deterministic eval one.
        background: colour transparent pixels are composited over.
        generator: (train only) the torch.Generator all random draws come from; None uses torch's global RNG.
        **train_options: (train only) fields of AugmentConfig: scale, ratio, color_jitter, color_jitter_prob,
            grayscale_prob.
    """
    if not train:
        if train_options or generator is not None:
            given = sorted(train_options) + (["generator"] if generator is not None else [])
            raise ValueError(f"train options {given} were given with train=False")
        return EvalTransform(cfg, background=background)
    return TrainTransform(cfg, AugmentConfig.from_options(**train_options), generator=generator, background=background)


def preprocess_batch(
    images: Iterable[ImageSource],
    transform: Callable[[Image.Image], torch.Tensor],
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    background: Background = WHITE,
) -> torch.Tensor:
    """Apply `transform` to each image and stack: a float tensor (N, 3, H, W).

    PIL images go to the transform as they are; paths, bytes and files are opened with `load_image` first
    (EXIF orientation, size guard `max_pixels`, transparency over `background`).
    """
    tensors = []
    for item in images:
        if not isinstance(item, Image.Image):
            item = load_image(item, max_pixels=max_pixels, background=background)
        tensors.append(transform(item))  # (3, H, W)
    if not tensors:
        raise ValueError("preprocess_batch got no images")
    return torch.stack(tensors)  # (N, 3, H, W)
