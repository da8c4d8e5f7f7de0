"""Converting a decoded PIL image of any mode to 8-bit RGB.

CLIP models see RGB, but real image collections hold every mode Pillow decodes: transparent PNGs and GIFs,
grey scans, 1-bit line art, 16-bit medical and astronomy TIFFs/PNGs, float TIFFs, CMYK print JPEGs. open_clip
calls `image.convert("RGB")` on all of them, which is right for RGB/L/1/CMYK/YCbCr but wrong for the rest:
transparency is dropped (whatever colour hides under alpha 0, often black, shows through), 16-bit values are
clipped at 255 (nearly every pixel turns white), and float images are read on a 0..255 scale. `to_rgb` here
owns one answer per mode, written out in its docstring, and is used both by `load_image` and by the transforms.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

Background = int | tuple[int, int, int]

WHITE: tuple[int, int, int] = (255, 255, 255)

# Modes that carry an alpha channel; premultiplied ones ("RGBa", "La") are un-premultiplied by Pillow first.
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
# Modes whose "transparency" info entry (PNG tRNS, GIF transparent index) marks one value as see-through.
_KEYED_TRANSPARENCY_MODES = ("P", "L", "RGB")


def parse_background(background: Background) -> tuple[int, int, int]:
    """An RGB triple from a grey level or a triple, each value checked to be in 0..255."""
    triple = (background,) * 3 if isinstance(background, int) else tuple(background)
    if len(triple) != 3 or not all(isinstance(v, int) and 0 <= v <= 255 for v in triple):
        raise ValueError(f"background must be an int or three ints in 0..255, got {background!r}")
    return triple  # type: ignore[return-value]


def to_rgb(image: Image.Image, background: Background = WHITE) -> Image.Image:
    """Return `image` as an 8-bit "RGB" image (the same object when it already is one without transparency).

    Per mode:
        RGB: unchanged. With a "transparency" colour key (PNG tRNS), keyed pixels become `background`.
        RGBA, LA, PA, RGBa, La: composited over `background` (default white), each channel
            round((c * a + bg * (255 - a)) / 255); fully opaque images just drop alpha.
        P: palette lookup; a transparent palette index (GIF/PNG) is composited like alpha above.
        L, 1: grey replicated to three channels (1-bit gives 0 or 255); L with a colour key as RGB.
        I;16 (all byte orders): 16-bit grey scaled to 8 bits as round(v / 257), so 65535 -> 255.
        I: 32-bit integers read as 16-bit data (what Pillow gives for many 16-bit files), clipped to
            0..65535, then scaled like I;16.
        F: floats read as intensities in [0, 1] (the numpy / scikit-image convention; Pillow's own
            convert() reads 0..255), clipped, times 255, rounded to nearest; NaN becomes 0.
        CMYK, YCbCr, HSV and the rest: Pillow's convert("RGB") (no ICC colour management).

    Raises:
        ValueError: the mode has no conversion to RGB (the message names the mode).
    """
    mode = image.mode
    keyed = mode in _KEYED_TRANSPARENCY_MODES and "transparency" in image.info
    if mode == "RGB" and not keyed:
        return image
    if mode in _ALPHA_MODES or keyed:
        if mode == "La":  # Pillow converts La only to LA
            image = image.convert("LA")
        return _composite(image.convert("RGBA"), parse_background(background))
    if mode in ("L", "1"):
        return image.convert("RGB")
    if mode in _SIXTEEN_BIT_MODES or mode == "I":
        values = np.asarray(image).astype(np.int64)  # (H, W)
        values = np.clip(values, 0, 65535)
        # round(v / 257) in integers: 257 is odd, so there are no ties.
        return _grey_to_rgb(((values + 128) // 257).astype(np.uint8))
    if mode == "F":
        values = np.nan_to_num(np.asarray(image, dtype=np.float32), nan=0.0)  # (H, W)
        return _grey_to_rgb(np.rint(np.clip(values, 0.0, 1.0) * 255.0).astype(np.uint8))
    try:
        return image.convert("RGB")
    except ValueError as exc:
        raise ValueError(f"cannot convert an image of mode {mode!r} to RGB: {exc}") from exc


def _grey_to_rgb(grey: np.ndarray) -> Image.Image:
    # (H, W) uint8 -> "RGB"
    return Image.fromarray(np.ascontiguousarray(grey)).convert("RGB")


def _composite(rgba: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """Alpha-composite an "RGBA" image over a solid background, rounding to nearest."""
    low, _ = rgba.getchannel("A").getextrema()
    if low == 255:  # opaque: alpha carries nothing
        return rgba.convert("RGB")
    pixels = np.asarray(rgba).astype(np.uint16)  # (H, W, 4)
    colour, alpha = pixels[..., :3], pixels[..., 3:]
    bg = np.asarray(background, dtype=np.uint16)  # (3,)
    # c*a + bg*(255-a) <= 255*255, so +127 still fits uint16; (x + 127) // 255 == round(x / 255) for integers.
    out = (colour * alpha + bg * (255 - alpha) + 127) // 255  # (H, W, 3)
    return Image.fromarray(out.astype(np.uint8))
