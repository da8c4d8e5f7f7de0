"""The output-size guard every resize in clipforge's preprocessing goes through.

`load_image` bounds the pixels an image *has*; this bounds the pixels a resize would *make*. They differ for
extreme aspect ratios: a 1 x 100,000 PNG has only 100,000 pixels, but scaling its short side to 224 asks Pillow
for a 224 x 22,400,000 image, about 15 GB, and one such file kills a whole classify/embed/eval job (a 1 x 20,000
one already takes 19 s and 4.3 GB). The target size is computed before resizing, so the check costs nothing and
refuses before any allocation; the error is an ImageLoadError, which every job catches to skip and count the image.
"""

from __future__ import annotations

from PIL import Image

from .loading import ImageAspectError

# 2**25 pixels, ~100 MB as 8-bit RGB: room for a shortest-side resize of any aspect ratio up to ~660:1 at 224 px
# (~300:1 at 336 px), far beyond real photos and panoramas, while bounding the memory and time of one image.
DEFAULT_MAX_RESIZE_PIXELS = 2**25


def check_resize(
    source_size: tuple[int, int],
    target_size: tuple[int, int],
    max_pixels: int | None,
    *,
    label: str = "image",
    remedy: str = "",
) -> None:
    """Raise ImageAspectError if resizing an image of `source_size` to `target_size` (both (width, height))
    would make more than `max_pixels` pixels; None disables the check (trusted inputs only)."""
    width, height = target_size
    if max_pixels is None or width * height <= max_pixels:
        return
    src_w, src_h = source_size
    ratio = max(src_w, src_h) / max(1, min(src_w, src_h))
    raise ImageAspectError(
        f"{label}: {src_w}x{src_h} image (aspect ratio {ratio:,.0f}:1) would be resized to {width}x{height} = "
        f"{width * height:,} pixels, over the limit of {max_pixels:,} (a guard against aspect-ratio bombs); "
        f"crop the image to a less extreme shape{remedy}"
    )


def image_label(image: Image.Image) -> str:
    """What a guard error calls a PIL image: its file name when it was opened from one."""
    filename = getattr(image, "filename", "")
    return str(filename) if filename else "image"
