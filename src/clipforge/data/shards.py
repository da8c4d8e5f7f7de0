"""Writing WebDataset tar shards in img2dataset's layout: {key}.jpg|png|webp + {key}.txt + {key}.json.

Each shard holds `samples_per_shard` samples (the last one fewer), keys are the sample's running index as nine
digits (unique across the shards of one call), and `sizes.json` beside the shards records each shard's sample
count (the file open_clip and TrainData read to size an epoch). Every file is written under a temporary name
and renamed into place, so a reader never sees a half-written shard. Inputs that cannot be used (an unreadable
or undecodable image, a FIFO or device instead of a file, a file over `max_image_bytes`, an empty caption) are
skipped and reported, never written: a shard set made here has no bad sample that can be found without a network.

File names that are not valid UTF-8 (surrogate-escaped by Python) never reach a key (keys are running numbers);
in a sample's .json such a name is written with its undecodable bytes as \\xNN escapes, and its exact bytes in
hex under "<field>_hex". A full disk raises NoSpaceError (clipforge.atomic) naming the device and the space this
shard needed; the partial shard is removed and the shards and sizes.json written before stay as they were.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import tarfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from PIL import Image

from clipforge.image import load_image
from clipforge.safeio import DEFAULT_MAX_IMAGE_BYTES, read_regular_file

from ..atomic import (
    TEMP_SUFFIX,
    NoSpaceError,
    atomic_write_bytes,
    is_no_space,
    no_space_error,
    remove_stale_temporaries,
)
from ..locking import output_lock
from .sources.webdataset import SIZES_FILE

_KEPT_FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}  # written as they are; others are re-encoded as PNG

ImageInput = bytes | str | os.PathLike
_LOCK_HINT = "wait for it to finish or write the shards to another folder"

log = logging.getLogger(__name__)


def _image_member(image: ImageInput, name: str, max_bytes: int | None) -> tuple[bytes, str]:
    """(bytes, extension) to store for `image`; raises OSError/ValueError when it cannot be read and decoded."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
        if max_bytes is not None and len(data) > max_bytes:
            raise ValueError(f"{len(data):,} bytes, over max_image_bytes={max_bytes:,}")
    else:  # only a regular file, never more than max_bytes: a FIFO would hang, /dev/zero would never end
        data = read_regular_file(image, max_bytes, what="image")
    with Image.open(io.BytesIO(data)) as probe:
        fmt = probe.format
    decoded = load_image(data, name=name)  # decodes fully: truncated and corrupt files fail here
    if fmt in _KEPT_FORMATS:
        return data, _KEPT_FORMATS[fmt]
    out = io.BytesIO()
    decoded.save(out, format="PNG")
    return out.getvalue(), "png"


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644  # fixed metadata: the same inputs give the same bytes
    tar.addfile(info, io.BytesIO(data))


def _atomic_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write_bytes(path, (json.dumps(data, indent=1, sort_keys=True) + "\n").encode("utf-8"))


def _printable(text: str) -> str:
    """`text` as valid UTF-8: the bytes of a surrogate-escaped (non-UTF-8) file name become \\xNN escapes."""
    return os.fsencode(text).decode("utf-8", "backslashreplace") if _has_surrogates(text) else text


def _has_surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _json_safe(meta: dict[str, Any]) -> dict[str, Any]:
    """`meta` with every non-UTF-8 string value escaped, and its exact bytes kept in hex under "<key>_hex"."""
    safe: dict[str, Any] = {}
    for key, value in meta.items():
        key = _printable(str(key))
        if isinstance(value, str) and _has_surrogates(value):
            safe[key] = _printable(value)
            safe[f"{key}_hex"] = os.fsencode(value).hex()
        else:
            safe[key] = value
    return safe


class _ShardWriter:
    def __init__(self, out_dir: Path, prefix: str) -> None:
        self.out_dir, self.prefix = out_dir, prefix
        self.paths: list[Path] = []
        self.sizes: dict[str, int] = {}
        self._tar: tarfile.TarFile | None = None
        self._tmp: Path | None = None
        self._count = 0

    def add(self, key: str, image: tuple[bytes, str], caption: str, meta: dict[str, Any]) -> None:
        if self._tar is None:
            final = self.out_dir / f"{self.prefix}-{len(self.paths):06d}.tar"
            self._tmp = final.with_name(f".{final.name}.{os.getpid()}{TEMP_SUFFIX}")
            self._tar = tarfile.open(self._tmp, "w", format=tarfile.USTAR_FORMAT)
            self.paths.append(final)
        data, ext = image
        _add(self._tar, f"{key}.{ext}", data)
        _add(self._tar, f"{key}.txt", caption.encode("utf-8"))
        _add(self._tar, f"{key}.json", json.dumps(meta, ensure_ascii=False, sort_keys=True).encode("utf-8"))
        self._count += 1

    def close_shard(self) -> None:
        if self._tar is None:
            return
        self._tar.close()
        os.replace(self._tmp, self.paths[-1])
        self.sizes[self.paths[-1].name] = self._count
        self._tar, self._tmp, self._count = None, None, 0

    def abort(self) -> int:
        """Drop the shard being written (its temporary file); the bytes it had reached."""
        if self._tar is None:
            return 0
        size = self._tar.offset
        with contextlib.suppress(OSError):  # closing writes the end blocks, which fails again on a full disk
            self._tar.close()
        self._tmp.unlink(missing_ok=True)
        self.paths.pop()
        self._tar, self._tmp, self._count = None, None, 0
        return size


def write_shards(
    samples: Iterable[tuple[ImageInput, str, dict[str, Any] | None]],
    out_dir: str | os.PathLike,
    samples_per_shard: int,
    prefix: str = "shard",
    *,
    on_skip: Callable[[str, str], None] | None = None,
    max_image_bytes: int | None = DEFAULT_MAX_IMAGE_BYTES,
) -> list[Path]:
    """Write (image bytes or path, caption, extra metadata) samples as tar shards; the shard paths in order.

    Args:
        samples: each image as encoded bytes or a file path; the caption; a dict stored in {key}.json (with "key"
            and "caption" added) or None.
        out_dir: created if missing; shards are named {prefix}-000000.tar, {prefix}-000001.tar, ...
        samples_per_shard: samples in each shard but the last.
        prefix: shard file name prefix.
        on_skip: called with (input name, reason) for each input that is skipped.
        max_image_bytes: image files (or bytes) larger than this are skipped; None reads any size.

    JPEG, PNG and WebP files are stored byte for byte; other formats are decoded and stored as PNG.
    sizes.json in out_dir gets an entry per shard as soon as the shard is complete (entries of other shards
    already there are kept). The folder is locked for the call (clipforge.locking.output_lock): a second writer
    into it gets FolderInUseError at once; temporary files left by a killed writer are removed first.
    """
    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be positive, got {samples_per_shard}")
    folder = Path(out_dir)
    with output_lock(folder, what="clipforge data make-shards", hint=_LOCK_HINT):
        stale = remove_stale_temporaries(folder)  # left by a writer that was killed; ours cannot be running
        if stale:
            log.warning("%s: removed %d temporary file(s) of an interrupted write", folder, len(stale))
        return _write_locked(samples, folder, samples_per_shard, prefix, on_skip, max_image_bytes)


def _write_locked(
    samples: Iterable[tuple[ImageInput, str, dict[str, Any] | None]],
    folder: Path,
    samples_per_shard: int,
    prefix: str,
    on_skip: Callable[[str, str], None] | None,
    max_image_bytes: int | None,
) -> list[Path]:
    sizes_path = folder / SIZES_FILE
    sizes: dict[str, Any] = {}
    if sizes_path.is_file():
        try:
            sizes = json.loads(sizes_path.read_text(encoding="utf-8"))
        except ValueError:
            sizes = {}
        sizes = sizes if isinstance(sizes, dict) else {}
    writer = _ShardWriter(folder, prefix)
    written = 0

    def close_shard() -> None:
        # sizes.json follows every finished shard, so that it is right however the run ends (a shard of an
        # earlier run that this one replaced never keeps its old count)
        writer.close_shard()
        sizes.update(writer.sizes)
        _atomic_json(sizes_path, sizes)

    try:
        for position, (image, caption, extra) in enumerate(samples):
            name = _describe(image, position)
            text = _printable(caption.strip()) if isinstance(caption, str) else ""
            if not text:
                if on_skip is not None:
                    on_skip(name, "empty caption")
                continue
            try:
                member = _image_member(image, name, max_image_bytes)
            except (OSError, ValueError, Image.DecompressionBombError) as exc:
                if on_skip is not None:
                    on_skip(name, _reason(exc))
                continue
            key = f"{written:09d}"
            writer.add(key, member, text, _json_safe({**(extra or {}), "key": key, "caption": text}))
            written += 1
            if written % samples_per_shard == 0:
                close_shard()
        close_shard()
    except BaseException as exc:
        target = writer.paths[-1] if writer._tar is not None else folder
        reached = writer.abort()
        if isinstance(exc, Exception) and is_no_space(exc) and not isinstance(exc, NoSpaceError):
            raise no_space_error(target, reached) from exc
        raise
    if not sizes_path.exists():
        _atomic_json(sizes_path, sizes)  # no shard written: still say so
    return writer.paths

def _describe(image: ImageInput, position: int) -> str:
    """What skip reports call an input: its path (non-UTF-8 bytes escaped), or its position for bytes."""
    if isinstance(image, (str, os.PathLike)):
        return _printable(os.fsdecode(image))
    return f"sample {position}"


def _reason(exc: BaseException) -> str:
    """Why an input was skipped; an OSError about the input's own path says only what is wrong (the caller names
    the input)."""
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        return exc.strerror
    return f"{type(exc).__name__}: {exc}"
