"""Atomic file writes: write to a temporary file in the same folder, fsync, then rename into place.

A crash or kill mid-write leaves either the old file or no file, never a truncated one; every
writer in clipforge (checkpoints, configs, features, reports, plots) goes through here.

The temporary file from `mkstemp` is private (mode 0600); before the rename it gets the mode any other new file
would get, 0666 minus the umask, or keeps the permissions of the file it replaces, as an in-place write would.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """`with atomic_open(p) as f: f.write(...)`: `p` appears only once the block finished without error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            _set_mode_like_open(handle.fileno(), path)
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _set_mode_like_open(fd: int, path: Path) -> None:
    """Give the temporary file `fd` the mode `open(path, "w")` would leave `path` with (mkstemp made it 0600)."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)  # replacing a file: keep its permissions
    except FileNotFoundError:
        mode = 0o666 & ~current_umask()
    if hasattr(os, "fchmod"):  # not on Windows, where files have no such permissions
        os.fchmod(fd, mode)


_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask, read without changing it where possible.

    The only portable way to read the umask is to set it and restore it, which is process-wide: a thread creating
    a file in between would get the wrong mode. Linux (4.7+) shows it in /proc/self/status, so that is read
    first; elsewhere the set-and-restore is done under a lock (which only guards clipforge's own callers).
    """
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        umask = os.umask(0o077)  # the most restrictive value, for the instant it is in force
        os.umask(umask)
    return umask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically: readers see the old file or the new one, never a partial write."""
    with atomic_open(path) as handle:
        handle.write(data)
