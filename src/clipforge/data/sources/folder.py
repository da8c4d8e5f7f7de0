"""Image folder source: every image file under a directory, captioned by the text file beside it (x.jpg + x.txt).

The folder is listed once (recursively, sorted, so the index of a file is stable); captions are read when a
sample is drawn, so a missing, empty, non-UTF-8 or oversized caption file (or a FIFO or device in its place) is
counted as a bad sample of that image.
"""

from __future__ import annotations

import os

from clipforge.models.config import ConfigError
from clipforge.safeio import DEFAULT_MAX_TEXT_BYTES, read_regular_file

from ..bad import BadSample
from ..tarsamples import RawSample
from .base import MapSource

FOLDER_IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def list_images(root: str) -> list[str]:
    """Image files under `root` (recursive, hidden files and folders skipped), sorted."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(
            os.path.join(folder, f) for f in files if not f.startswith(".") and f.lower().endswith(FOLDER_IMAGE_EXTS)
        )
    return sorted(found)


def read_caption_file(path: str, image: str) -> str:
    """The stripped UTF-8 text of a caption file; BadSample (named after `image`) when missing, empty or invalid."""
    try:  # a FIFO named x.txt would block, /dev/zero would never end: a regular file of at most 1 MiB
        text = read_regular_file(path, DEFAULT_MAX_TEXT_BYTES, what="caption file").decode("utf-8")
    except FileNotFoundError as exc:
        raise BadSample(image, "missing caption file") from exc
    except UnicodeDecodeError as exc:
        raise BadSample(image, f"caption is not UTF-8 ({exc.reason})") from exc
    except OSError as exc:  # also NotRegularFileError, FileTooLargeError
        raise BadSample(image, f"cannot read caption: {exc}") from exc
    text = text.strip()
    if not text:
        raise BadSample(image, "empty caption")
    return text


class FolderSource(MapSource):
    """Images under a folder with sidecar .txt captions."""

    def __init__(self, root: str) -> None:
        if not os.path.isdir(root):
            raise ConfigError(f"image folder {root!r} does not exist")
        self.name = root
        self.paths = list_images(root)
        if not self.paths:
            raise ConfigError(f"no images ({', '.join(FOLDER_IMAGE_EXTS)}) under {root}")

    def __len__(self) -> int:
        return len(self.paths)

    def read(self, index: int) -> RawSample:
        image = self.paths[index]
        caption = read_caption_file(os.path.splitext(image)[0] + ".txt", image)
        return RawSample(image=image, caption=caption, name=image, label=image)
