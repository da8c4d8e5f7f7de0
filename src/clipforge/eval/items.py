"""What identifies an evaluation item: a name for reports, an identity for split checks, a content signature.

Evaluation sets (`ClassificationSet`, `RetrievalSet`) read pixels through an image source: files
(`PathImages`), members of tar shards (`TarImages`) or one in-memory array (`ArrayImages`). Views
(`SubsetView`, `CarvedView`) select rows of another set and expose `.dataset` and `.rows`. Three questions
about items are answered here, through any chain of views:

- `item_name(dataset, i)`: what a report calls item i (its path; "NAME[i]" for arrays), so a skipped
  image can be found and fixed.
- `item_identities(dataset)`: one id per item that is equal for the same image file in two splits (the
  resolved path, the shard member), or None when the source cannot tell (arrays: their loaders read
  distinct files per split). Used to refuse, or carve, a "train" split that is the test set.
- `content_signature(dataset)`: a hash of what the items hold now (size and mtime_ns of every file, and
  the bytes themselves where that is cheap), so the feature cache misses after a file was rewritten
  under the same name. Names alone (the dataset fingerprint) cannot see that.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterable
from typing import Any

import numpy as np

from .datasets.base import ArrayImages, PathImages
from .datasets.shards import TarImages

# Below this many bytes of image files in total, the cache key also hashes the files' bytes ("auto"):
# reading 64 MiB from the page cache takes tens of milliseconds, while a larger set costs a real read on every
# cache hit. size + mtime_ns is always part of the key.
AUTO_HASH_LIMIT_BYTES = 64 * 1024 * 1024
_READ_CHUNK = 1 << 20


def base_rows(dataset: Any) -> tuple[Any, list[int] | None]:
    """(the underlying set, the rows of it `dataset` holds in order) through any chain of views.

    A view is an object with `.dataset` and `.rows` (dataset indices of the wrapped set). An object with only
    `.dataset` is a view of unknown rows: the whole wrapped set stands for it (rows None).
    """
    rows: list[int] | None = list(range(len(dataset)))
    while hasattr(dataset, "dataset") and not hasattr(dataset, "images"):
        inner_rows = getattr(dataset, "rows", None)
        if inner_rows is None:
            rows = None
        elif rows is not None:
            rows = [inner_rows[r] for r in rows]
        dataset = dataset.dataset
    return dataset, rows


def _source(dataset: Any) -> tuple[Any, list[int] | None]:
    base, rows = base_rows(dataset)
    return getattr(base, "images", None), rows


def item_name(dataset: Any, index: int) -> str:
    """How a report names item `index` of `dataset`: a file path, a shard member, or "NAME[i]"."""
    source, rows = _source(dataset)
    row = rows[index] if rows is not None else None
    if row is not None:
        if isinstance(source, PathImages):
            return source.paths[row]
        if isinstance(source, TarImages):
            return source.labels[row]
        if isinstance(source, ArrayImages):
            return f"{source.name}[{row}]"
    return f"{getattr(dataset, 'name', 'dataset')}[{index}]"


def item_identities(dataset: Any) -> list[str] | None:
    """One id per item, equal for the same file reached from two splits; None when the source cannot say."""
    source, rows = _source(dataset)
    if rows is None:
        return None
    if isinstance(source, PathImages):
        return [os.path.realpath(source.paths[r]) for r in rows]
    if isinstance(source, TarImages):
        return [source.labels[r] for r in rows]
    return None


def item_location(dataset: Any) -> str | None:
    """The deepest folder holding every item's file (for "train split: R/train (N images)"), or None."""
    identities = item_identities(dataset)
    if not identities:
        return None
    try:
        common = os.path.commonpath([os.path.dirname(p) for p in identities])
    except ValueError:  # URLs and paths, or paths on different drives
        return None
    return common or None


def _stat_token(path: str) -> tuple[str, int, bool]:
    """('size:mtime_ns' or why not, size, whether it is a regular file that may be read)."""
    try:
        st = os.stat(path)
    except OSError as exc:
        return f"unreadable:{type(exc).__name__}", 0, False
    if not stat.S_ISREG(st.st_mode):  # a FIFO or device must never be opened for hashing (it may block)
        return f"not-regular:{stat.S_IFMT(st.st_mode)}", 0, False
    return f"{st.st_size}:{st.st_mtime_ns}", st.st_size, True


def _hash_file(digest: Any, path: str) -> None:
    try:
        with open(path, "rb") as file:
            while chunk := file.read(_READ_CHUNK):
                digest.update(chunk)
    except OSError as exc:
        digest.update(f"unreadable:{type(exc).__name__}".encode())


def _files_signature(paths: Iterable[str], hash_contents: bool | None) -> tuple[str, bool]:
    """Hash of (path, size, mtime_ns) of each file, plus the bytes when asked or small; (hex, hashed bytes)."""
    digest = hashlib.blake2b(digest_size=16)
    readable, total = [], 0
    for path in paths:
        token, size, regular = _stat_token(path)
        digest.update(path.encode("utf-8", "surrogateescape") + b"\0" + token.encode() + b"\n")
        if regular:
            readable.append(path)
            total += size
    hashed = hash_contents if hash_contents is not None else total <= AUTO_HASH_LIMIT_BYTES
    if hashed:
        for path in readable:
            _hash_file(digest, path)
    return digest.hexdigest(), bool(hashed)


def content_signature(dataset: Any, hash_contents: bool | None = None) -> str | None:
    """A hash of what `dataset`'s items hold now; None for a source it cannot see into.

    Args:
        hash_contents: also hash the files' bytes: True always, False never (size + mtime_ns only), None
            ("auto") when the set's files total at most AUTO_HASH_LIMIT_BYTES. In-memory images (arrays,
            shard members kept in memory) are always hashed: they are already in memory.
    """
    source, rows = _source(dataset)
    if isinstance(source, PathImages):
        paths = source.paths if rows is None else [source.paths[r] for r in rows]
        signature, hashed = _files_signature(paths, hash_contents)
        return f"files:{'bytes' if hashed else 'stat'}:{signature}"
    if isinstance(source, TarImages):
        digest = hashlib.blake2b(digest_size=16)
        wanted = range(len(source.where)) if rows is None else rows
        shard_paths = []
        for r in wanted:
            item = source.where[r]
            if isinstance(item, bytes):
                digest.update(hashlib.blake2b(item, digest_size=16).digest())
            else:
                digest.update(f"{item[1]}:{item[2]}".encode())
                shard_paths.append(item[0])
        shards, hashed = _files_signature(dict.fromkeys(shard_paths), hash_contents)
        return f"shards:{'bytes' if hashed else 'stat'}:{shards}:{digest.hexdigest()}"
    if isinstance(source, ArrayImages):
        array = np.ascontiguousarray(source.array)
        digest = hashlib.blake2b(digest_size=16)
        digest.update(f"{array.dtype}{array.shape}".encode())
        digest.update(memoryview(array).cast("B"))
        return f"array:{digest.hexdigest()}"
    return None
