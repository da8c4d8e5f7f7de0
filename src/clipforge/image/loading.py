"""Opening image files safely: size guard, EXIF orientation, decoding errors that name the file.

One function, `load_image`, turns a path, an open binary file, raw bytes or a PIL image into an upright 8-bit
RGB image (`convert.to_rgb` for the mode rules). Everything that reads images from disk or shards goes through
it, so a bad file fails the same way everywhere: `ImageLoadError` (an OSError) naming the file, or its subclass
`ImageTooLargeError` for decompression bombs. A missing file stays a plain FileNotFoundError.

Pillow guards against decompression bombs with a process-wide limit (`PIL.Image.MAX_IMAGE_PIXELS`: a warning
above it, an error above twice it). Here the limit is a per-call argument, `max_pixels`; the global is only
touched when a call asks for more than Pillow allows: it is lifted for that call under a lock and restored
afterwards (meanwhile Pillow calls from other threads see no global limit either; calls within Pillow's limit,
the default, never touch it).
"""

from __future__ import annotations

import errno
import io
import os
import re
import stat
import struct
import threading
from typing import IO

from PIL import Image, ImageOps

from .convert import WHITE, Background, to_rgb

ImageSource = str | os.PathLike | bytes | IO[bytes] | Image.Image

DEFAULT_MAX_PIXELS = 178_956_970  # Pillow's default MAX_IMAGE_PIXELS: 1024**3 // 4 // 3, about 13,400 x 13,400.

_EXIF_ORIENTATION = 0x0112
_PIL_LIMIT_LOCK = threading.Lock()
# What Pillow raises for files it cannot decode; OSError covers truncated data and unidentified formats.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, struct.error, EOFError, IndexError)


class ImageLoadError(OSError):
    """An image could not be read: corrupt, truncated, not an image, or of a mode with no RGB conversion."""


class ImageTooLargeError(ImageLoadError):
    """An image has more pixels than the caller allowed (a guard against decompression bombs)."""


def load_image(
    source: ImageSource,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    background: Background = WHITE,
    name: str | None = None,
) -> Image.Image:
    """Open `source` as an upright 8-bit RGB PIL image.

    Args:
        source: a path, an open binary file, the encoded bytes, or a PIL image (decoded or lazily opened).
        max_pixels: refuse images with more than width * height pixels; None disables the guard (only
            for trusted files). The default is Pillow's own default limit.
        background: colour transparent pixels are composited over (RGBA, LA, PA, transparent palette
            entries and colour keys); white by default, an int is a grey level.
        name: what error messages call the image (e.g. "shard-0001.tar/000042.jpg" for bytes from a shard);
            by default the path, the file's name, or the PIL image's filename.

    The EXIF orientation tag is applied (ImageOps.exif_transpose), so phone photos come out upright. Modes
    are converted by `to_rgb`: see there for each mode, notably transparency composited on `background`.
    An upright RGB PIL image is returned as the same object (loaded), anything else as a new image.

    Raises:
        FileNotFoundError / PermissionError: the path cannot be opened.
        ImageTooLargeError: more than `max_pixels` pixels; the message says how to raise the limit.
        ImageLoadError: corrupt, truncated or unrecognised data, or a mode with no RGB conversion.
    """
    label = name or _describe(source)
    if max_pixels is not None and max_pixels <= 0:
        raise ValueError(f"max_pixels must be positive or None, got {max_pixels}")
    pil_limit = Image.MAX_IMAGE_PIXELS
    if pil_limit is not None and (max_pixels is None or max_pixels > pil_limit):
        # The caller allows more than Pillow's global limit: lift it for this call only. The lock keeps two
        # such calls from restoring each other's value; calls within Pillow's limit never take it.
        with _PIL_LIMIT_LOCK:
            saved = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None
            try:
                return _load(source, label, max_pixels, background)
            finally:
                Image.MAX_IMAGE_PIXELS = saved
    return _load(source, label, max_pixels, background)


def _load(source: ImageSource, label: str, max_pixels: int | None, background: Background) -> Image.Image:
    if isinstance(source, Image.Image):
        return _finish(source, label, max_pixels, background)
    if isinstance(source, (str, os.PathLike)):
        with _open_regular_file(source, label) as file:  # missing or unreadable paths raise their own OSError
            return _open_and_finish(file, label, max_pixels, background)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _open_and_finish(io.BytesIO(source), label, max_pixels, background)
    if hasattr(source, "read"):
        return _open_and_finish(source, label, max_pixels, background)
    raise TypeError(f"load_image takes a path, bytes, a binary file or a PIL image, got {type(source).__name__}")


def _open_regular_file(path: str | os.PathLike, label: str) -> IO[bytes]:
    """Open `path` for reading, refusing anything but a regular file.

    A plain `open()` of a FIFO blocks until some process writes to it, so one stray named pipe in a photo
    folder would hang a whole job; the file is therefore opened non-blocking, checked with fstat (no race
    between the check and the read), and only then switched back to blocking reads.
    """
    nonblock = getattr(os, "O_NONBLOCK", 0)
    fd = os.open(path, os.O_RDONLY | nonblock)
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, "Is a directory; give an image file", os.fspath(path))
        if not stat.S_ISREG(mode):
            raise ImageLoadError(f"{label}: not a regular file (a FIFO, socket or device); give an image file")
        if nonblock:
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _open_and_finish(file: IO[bytes], label: str, max_pixels: int | None, background: Background) -> Image.Image:
    try:
        image = Image.open(file)
    except Image.DecompressionBombError as exc:  # over Pillow's own hard limit, before we see the size
        raise _pillow_bomb_error(exc, label, max_pixels) from exc
    except _DECODE_ERRORS as exc:
        raise ImageLoadError(f"cannot read {label} as an image: {exc}") from exc
    return _finish(image, label, max_pixels, background)


def _finish(image: Image.Image, label: str, max_pixels: int | None, background: Background) -> Image.Image:
    width, height = image.size
    if max_pixels is not None and width * height > max_pixels:
        raise ImageTooLargeError(_too_large_message(label, (width, height), width * height, max_pixels))
    try:
        if image.getexif().get(_EXIF_ORIENTATION, 1) != 1:
            image = ImageOps.exif_transpose(image)  # decodes; returns a new image without the tag
        else:
            image.load()  # decode now, so truncation is reported here and not later by a transform
        return to_rgb(image, background)
    except Image.DecompressionBombError as exc:  # Pillow's per-frame / per-tile checks (GIF, TIFF) while decoding
        raise _pillow_bomb_error(exc, label, max_pixels) from exc
    except _DECODE_ERRORS as exc:
        raise ImageLoadError(f"cannot decode {label}: {exc}") from exc


def _pillow_bomb_error(exc: Exception, label: str, max_pixels: int | None) -> ImageTooLargeError:
    found = re.search(r"\((\d+) pixels\)", str(exc))
    pixels = int(found.group(1)) if found else None
    return ImageTooLargeError(_too_large_message(label, None, pixels, max_pixels))


def _too_large_message(label: str, size: tuple[int, int] | None, pixels: int | None, max_pixels: int | None) -> str:
    dims = f"{size[0]}x{size[1]} = " if size else ""
    count = f"{dims}{pixels:,} pixels" if pixels is not None else "too many pixels"
    limit = f"the limit of {max_pixels:,}" if max_pixels is not None else "Pillow's limit"
    raise_to = f"max_pixels={pixels}" if pixels is not None else "a larger max_pixels"
    return (
        f"{label}: image has {count}, over {limit} (a guard against decompression bombs); "
        f"if the file is trusted, pass load_image(..., {raise_to}) or max_pixels=None"
    )


def _describe(source: object) -> str:
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        return path if isinstance(path, str) else os.fsdecode(path)
    if isinstance(source, Image.Image):
        filename = getattr(source, "filename", "")
        return str(filename) if filename else f"<PIL image {source.mode} {source.size[0]}x{source.size[1]}>"
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes>"
    file_name = getattr(source, "name", None)
    return str(file_name) if isinstance(file_name, (str, bytes)) else f"<{type(source).__name__}>"
