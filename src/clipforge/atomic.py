"""Atomic file writes: write to a temporary file in the same folder, fsync, then rename into place.

A crash or kill mid-write leaves either the old file or no file, never a truncated one; every
writer in clipforge (checkpoints, configs, features, reports, plots) goes through here.

Temporary files end in `.clipforge-partial.tmp`, so that what a killed writer left behind can be recognised and
removed (`remove_stale_temporaries`, called by a job that holds the folder's lock). A full disk is reported as a
`NoSpaceError` naming the device, the file and the space needed, instead of a bare `OSError 28` or PyTorch's
"unexpected pos"; the partial file is removed and the file being replaced stays intact.

The temporary file from `mkstemp` is private (mode 0600); before the rename it gets the mode any other new file
would get, 0666 minus the umask, or keeps the permissions of the file it replaces, as an in-place write would.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import stat
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

TEMP_SUFFIX = ".clipforge-partial.tmp"  # every temporary file clipforge writes ends so; see remove_stale_temporaries
_STALE = re.compile(r"^\..+(\.clipforge-partial\.tmp|\.tar\.tmp-\d+)$")  # and clipforge 0.1 shard temporaries
_NO_SPACE = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


class NoSpaceError(OSError):
    """A write failed because the file system is full (or the user's quota is used up); the message says where and
    about how much was needed. Files that were being replaced are left as they were. `path` is the file."""

    def __init__(self, message: str, path: str) -> None:
        super().__init__(errno.ENOSPC, message)  # no filename: the message names it, and reads as written
        self.path = path

    def __str__(self) -> str:
        return str(self.strerror)


def is_no_space(exc: BaseException) -> bool:
    """Whether `exc`, or an exception it was raised from or while handling, is ENOSPC / EDQUOT.

    torch.save reports a failed write as `RuntimeError: ... unexpected pos`, with the OSError as its context.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _NO_SPACE:
            return True
        current = current.__cause__ or current.__context__
    return False


def mount_point(path: str | os.PathLike) -> str:
    """The mount point of the file system holding `path` (its nearest existing folder), for messages."""
    current = os.path.abspath(os.fspath(path))
    while not os.path.exists(current):
        current = os.path.dirname(current)
    while not os.path.ismount(current):
        current = os.path.dirname(current)
    return current


def no_space_error(path: str | os.PathLike, needed_bytes: int) -> NoSpaceError:
    """A NoSpaceError for a failed write of `path`: the device (mount point), the space needed and free, what to do."""
    folder = os.path.dirname(os.path.abspath(os.fspath(path)))
    try:
        free = f", {shutil.disk_usage(folder).free / 1e6:.1f} MB free"
    except OSError:
        free = ""
    needed = f"about {max(needed_bytes, 1) / 1e6:.1f} MB needed for this file{free}"
    return NoSpaceError(
        f"no space left on the device mounted at {mount_point(folder)} while writing {os.fspath(path)} ({needed}); "
        "free some space or write elsewhere; earlier outputs were left intact and the partial file was removed",
        os.fspath(path),
    )


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files a killed clipforge writer left in `folder`; the paths removed.

    Call only while holding the folder's lock (clipforge.locking.output_lock): a temporary file of a writer that
    is still running looks the same as one left by a killed writer.
    """
    removed = []
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for entry in os.scandir(folder):
            if _STALE.match(entry.name) and entry.is_file(follow_symlinks=False):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    removed.append(Path(entry.path))
    return removed


def _size_of(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """`with atomic_open(p) as f: f.write(...)`: `p` appears only once the block finished without error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as handle:
            _set_mode_like_open(handle.fileno(), path)
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        written = _size_of(tmp)
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, Exception) and is_no_space(exc):
            raise no_space_error(path, written) from exc
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
