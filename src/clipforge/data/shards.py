"""Writing WebDataset tar shards in img2dataset's layout: {key}.jpg|png|webp + {key}.txt + {key}.json.

Each shard holds `samples_per_shard` samples (the last one fewer), keys are the sample's running index as nine
digits (unique across the shards of one call), and `sizes.json` beside the shards records each shard's sample
count (the file open_clip and TrainData read to size an epoch). Every file is written under a temporary name
and renamed into place, so a reader never sees a half-written shard. Inputs that cannot be used (an unreadable
or undecodable image, an empty caption) are skipped and reported, never written: a shard set made here has no
bad sample that can be found without a network.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from PIL import Image

from clipforge.image import load_image

from ..atomic import atomic_write_bytes
from .sources.webdataset import SIZES_FILE

_KEPT_FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}  # written as they are; others are re-encoded as PNG

ImageInput = bytes | str | os.PathLike


def _image_member(image: ImageInput, name: str) -> tuple[bytes, str]:
    """(bytes, extension) to store for `image`; raises OSError/ValueError when it cannot be read and decoded."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
    else:
        with open(image, "rb") as file:
            data = file.read()
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
            self._tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
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

    def abort(self) -> None:
        if self._tar is not None:
            self._tar.close()
            self._tmp.unlink(missing_ok=True)
            self.paths.pop()
            self._tar = None


def write_shards(
    samples: Iterable[tuple[ImageInput, str, dict[str, Any] | None]],
    out_dir: str | os.PathLike,
    samples_per_shard: int,
    prefix: str = "shard",
    *,
    on_skip: Callable[[str, str], None] | None = None,
) -> list[Path]:
    """Write (image bytes or path, caption, extra metadata) samples as tar shards; the shard paths in order.

    Args:
        samples: each image as encoded bytes or a file path; the caption; a dict stored in {key}.json (with "key"
            and "caption" added) or None.
        out_dir: created if missing; shards are named {prefix}-000000.tar, {prefix}-000001.tar, ...
        samples_per_shard: samples in each shard but the last.
        prefix: shard file name prefix.
        on_skip: called with (input name, reason) for each input that is skipped.

    JPEG, PNG and WebP files are stored byte for byte; other formats are decoded and stored as PNG.
    sizes.json in out_dir gets an entry per shard (entries of other shards already there are kept).
    """
    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be positive, got {samples_per_shard}")
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    writer = _ShardWriter(folder, prefix)
    written = 0
    try:
        for position, (image, caption, extra) in enumerate(samples):
            name = os.fspath(image) if isinstance(image, (str, os.PathLike)) else f"sample {position}"
            text = caption.strip() if isinstance(caption, str) else ""
            if not text:
                if on_skip is not None:
                    on_skip(name, "empty caption")
                continue
            try:
                member = _image_member(image, name)
            except (OSError, ValueError, Image.DecompressionBombError) as exc:
                if on_skip is not None:
                    on_skip(name, f"{type(exc).__name__}: {exc}")
                continue
            key = f"{written:09d}"
            writer.add(key, member, text, {**(extra or {}), "key": key, "caption": text})
            written += 1
            if written % samples_per_shard == 0:
                writer.close_shard()
        writer.close_shard()
    except BaseException:
        writer.abort()
        raise
    sizes_path = folder / SIZES_FILE
    sizes: dict[str, Any] = {}
    if sizes_path.is_file():
        try:
            sizes = json.loads(sizes_path.read_text(encoding="utf-8"))
        except ValueError:
            sizes = {}
    sizes.update(writer.sizes)
    _atomic_json(sizes_path, sizes)
    return writer.paths
