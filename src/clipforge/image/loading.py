"""Opening image files safely: size guard, EXIF orientation, decoding errors that name the file.

One function, `load_image`, turns a path, an open binary file, raw bytes or a PIL image into an upright 8-bit
RGB image (`convert.to_rgb` for the mode rules). Everything that reads images from disk or shards goes through
it, so a bad file fails the same way everywhere: `ImageLoadError` (an OSError) naming the file, or its subclass
`ImageTooLargeError` for decompression bombs and oversized files. A missing file stays a plain FileNotFoundError.

Only a fixed list of formats is decoded (`ALLOWED_FORMATS`: JPEG, PNG, WebP, GIF, BMP, TIFF, ...), whatever the file
is named: Pillow otherwise identifies files by content, so an EPS or PDF file named `photo.jpg` would reach a plugin
that runs Ghostscript, an external program. Files are also capped in bytes (`max_bytes`) before anything is read.

Pillow guards against decompression bombs with a process-wide limit (`PIL.Image.MAX_IMAGE_PIXELS`: a warning
above it, an error above twice it). Here the limit is a per-call argument, `max_pixels`; the global is only
touched when a call asks for more than Pillow allows: it is lifted for that call under a lock and restored
afterwards (meanwhile Pillow calls from other threads see no global limit either; calls within Pillow's limit,
the default, never touch it).
"""

from __future__ import annotations

import io
import os
import re
import struct
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO

from PIL import Image, ImageOps, UnidentifiedImageError

from ..safeio import open_regular_file
from .convert import WHITE, Background, to_rgb

ImageSource = str | os.PathLike | bytes | IO[bytes] | Image.Image

DEFAULT_MAX_PIXELS = 178_956_970  # Pillow's default MAX_IMAGE_PIXELS: 1024**3 // 4 // 3, about 13,400 x 13,400.
DEFAULT_MAX_BYTES = 256 * 2**20  # 256 MiB: far above any real photo, far below what would exhaust memory.

# Pillow format ids decoded by default: raster formats decoded in-process by Pillow's own C code or the common image
# libraries (libjpeg, zlib, libwebp, libtiff, libavif). Deliberately absent: EPS (and PostScript), which runs
# Ghostscript; PDF (save-only in Pillow, listed for clarity); WMF/EMF; and rarely used scientific or legacy
# containers (FITS, HDF5, GRIB, BUFR, MPEG, PSD, ...) whose decoders see little scrutiny. Ids missing from this
# Pillow build (AVIF without libavif) are skipped. MPO, the multi-picture JPEG of many phones, is opened by "JPEG".
ALLOWED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "DIB", "TIFF", "PPM", "TGA", "ICO", "AVIF")

_EXIF_ORIENTATION = 0x0112
_PIL_LIMIT_LOCK = threading.Lock()
# What Pillow raises for files it cannot decode; OSError covers truncated data and unidentified formats.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, struct.error, EOFError, IndexError)


class ImageLoadError(OSError):
    """An image could not be read: corrupt, truncated, not an image, or of a mode with no RGB conversion."""


class ImageTooLargeError(ImageLoadError):
    """An image has more pixels, or its file more bytes, than the caller allowed (a guard against bombs)."""


class ImageAspectError(ImageLoadError):
    """Preprocessing an image would make an oversized intermediate image (an aspect-ratio bomb).

    A 1 x 100,000 image has few pixels, but resizing its short side to 224 asks for a 224 x 22,400,000 image
    (about 15 GB): transforms refuse such resizes before allocating anything, so a job skips the image.
    """


def load_image(
    source: ImageSource,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    background: Background = WHITE,
    name: str | None = None,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
    formats: Sequence[str] | None = ALLOWED_FORMATS,
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
        max_bytes: refuse files (or bytes, or streams) larger than this before decoding; None disables the cap.
        formats: Pillow format ids that may be decoded (`ALLOWED_FORMATS` by default); None allows every format
            Pillow knows, including EPS, which runs Ghostscript: only for trusted files. Does not apply to a
            PIL image passed in, which the caller opened.

    The EXIF orientation tag is applied (ImageOps.exif_transpose), so phone photos come out upright. Modes
    are converted by `to_rgb`: see there for each mode, notably transparency composited on `background`.
    An upright RGB PIL image is returned as the same object (loaded), anything else as a new image.

    Raises:
        FileNotFoundError / PermissionError: the path cannot be opened.
        ImageTooLargeError: more than `max_pixels` pixels or `max_bytes` bytes; the message says how to raise it.
        ImageLoadError: corrupt, truncated or unrecognised data, a format not in `formats`, not a regular file,
            or a mode with no RGB conversion.
    """
    label = name or _describe(source)
    if max_pixels is not None and max_pixels <= 0:
        raise ValueError(f"max_pixels must be positive or None, got {max_pixels}")
    if max_bytes is not None and max_bytes <= 0:
        raise ValueError(f"max_bytes must be positive or None, got {max_bytes}")
    opener = _Opener(label, max_pixels, background, max_bytes, _usable_formats(formats))
    pil_limit = Image.MAX_IMAGE_PIXELS
    if pil_limit is not None and (max_pixels is None or max_pixels > pil_limit):
        # The caller allows more than Pillow's global limit: lift it for this call only. The lock keeps two
        # such calls from restoring each other's value; calls within Pillow's limit never take it.
        with _PIL_LIMIT_LOCK:
            saved = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None
            try:
                return opener.load(source)
            finally:
                Image.MAX_IMAGE_PIXELS = saved
    return opener.load(source)


def _usable_formats(formats: Sequence[str] | None) -> tuple[str, ...] | None:
    """`formats` upper-cased and limited to those this Pillow build can open (Image.open raises on unknown ids)."""
    if formats is None:
        return None
    if isinstance(formats, str):
        raise TypeError(f"formats must be a sequence of Pillow format ids such as ('JPEG', 'PNG'), got {formats!r}")
    Image.init()  # registers every plugin once; a no-op afterwards
    usable = tuple(f.upper() for f in formats if f.upper() in Image.OPEN)
    if not usable:
        raise ValueError(f"none of the formats {list(formats)} can be opened by this Pillow build")
    return usable


@dataclass(frozen=True)
class _Opener:
    """The options of one load_image call, applied to whichever kind of source it was given."""

    label: str
    max_pixels: int | None
    background: Background
    max_bytes: int | None
    formats: tuple[str, ...] | None

    def load(self, source: ImageSource) -> Image.Image:
        if isinstance(source, Image.Image):
            return _finish(source, self.label, self.max_pixels, self.background)
        if isinstance(source, (str, os.PathLike)):
            with open_regular_file(source, "image file") as file:  # missing or unreadable paths: their own OSError
                self._check_bytes(os.fstat(file.fileno()).st_size)
                return self._open_and_finish(file)
        if isinstance(source, (bytes, bytearray, memoryview)):
            self._check_bytes(len(source))
            return self._open_and_finish(io.BytesIO(source))
        if hasattr(source, "read"):
            return self._open_and_finish(self._capped_stream(source))
        raise TypeError(f"load_image takes a path, bytes, a binary file or a PIL image, got {type(source).__name__}")

    def _check_bytes(self, size: int) -> None:
        if self.max_bytes is not None and size > self.max_bytes:
            raise ImageTooLargeError(
                f"{self.label}: file is {size:,} bytes, over the limit of {self.max_bytes:,} (a guard against "
                f"huge or endless inputs); if the file is trusted, pass load_image(..., max_bytes={size}) "
                "or max_bytes=None"
            )

    def _capped_stream(self, stream: IO[bytes]) -> IO[bytes]:
        """The stream itself when its remaining size is known and within the cap, else its bytes read up to the cap.

        Pillow reads a stream it cannot seek whole into memory, so a pipe from /dev/zero would never end; reading
        at most max_bytes + 1 bytes here bounds that.
        """
        if self.max_bytes is None:
            return stream
        try:
            start = stream.tell()
            size = stream.seek(0, io.SEEK_END)  # Pillow reads from the stream's start, so its whole size counts
            stream.seek(start)
        except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both an OSError and a ValueError
            data = _read_up_to(stream, self.max_bytes + 1)
            self._check_bytes(len(data))
            return io.BytesIO(data)
        self._check_bytes(size)
        return stream

    def _open_and_finish(self, file: IO[bytes]) -> Image.Image:
        return _open_and_finish(file, self.label, self.max_pixels, self.background, self.formats)


def _read_up_to(stream: IO[bytes], limit: int) -> bytes:
    """At most `limit` bytes of `stream`, until its end: a pipe's read() may return fewer than asked for."""
    chunks, total = [], 0
    while total < limit:
        chunk = stream.read(min(limit - total, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)


def _open_and_finish(
    file: IO[bytes], label: str, max_pixels: int | None, background: Background, formats: tuple[str, ...] | None
) -> Image.Image:
    try:
        image = Image.open(file, formats=formats)
    except Image.DecompressionBombError as exc:  # over Pillow's own hard limit, before we see the size
        raise _pillow_bomb_error(exc, label, max_pixels) from exc
    except UnidentifiedImageError as exc:
        allowed = "" if formats is None else f" of an allowed format ({', '.join(formats)})"
        raise ImageLoadError(
            f"cannot read {label} as an image: not an image{allowed}, whatever its name says; other formats "
            "(e.g. EPS or PDF, which would run external programs) are refused unless load_image(..., formats=...) "
            "lists them"
        ) from exc
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
