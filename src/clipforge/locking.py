"""An advisory lock on an output folder, so that two jobs never write into the same one at once.

Two `clipforge train` runs (or two `make-shards`) pointed at one folder would otherwise both
succeed and leave interleaved metrics or shards with a wrong `sizes.json`. The job that writes a
folder holds `FOLDER/.lock` for its whole run:

    with output_lock(output_dir, what="clipforge train"):
        ...  # write into output_dir

A second job gets `FolderInUseError` at once ("OUT is in use by another clipforge train (pid 123
on node7); wait for it or use another --output_dir") instead of waiting or corrupting the folder.

Why `fcntl.flock` on an open file rather than "create the file if absent": the kernel drops the
lock when the holder's file descriptor closes, which includes a `kill -9`, a crash or an OOM kill,
so a stale lock never needs cleaning up by hand. The file itself stays (deleting it on release
would let a third job lock a new inode while a second still holds the old one); its content only
names the current holder for the error message. flock works on local filesystems and on NFS (Linux
emulates it with byte-range locks); on a platform without `fcntl` (Windows) no lock is taken.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks, folders are not protected
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".lock"


class FolderInUseError(RuntimeError):
    """Another process holds the folder's lock. `holder` is what it wrote (pid, host, what), possibly empty."""

    def __init__(self, folder: Path, holder: dict, hint: str) -> None:
        self.folder = folder
        self.holder = holder
        self.hint = hint
        who = str(holder.get("what") or "clipforge job")
        where = []
        if holder.get("pid"):
            where.append(f"pid {holder['pid']}")
        if holder.get("host"):
            where.append(f"on {holder['host']}")
        details = f" ({' '.join(where)})" if where else ""
        super().__init__(f"{folder} is in use by another {who}{details}; {hint}")


def _read_holder(fd: int) -> dict:
    """What the current holder wrote into the lock file; {} if it is empty or not ours (best effort)."""
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        data = os.read(fd, 4096)
        holder = json.loads(data.decode("utf-8")) if data.strip() else {}
        return holder if isinstance(holder, dict) else {}
    except (OSError, ValueError):
        return {}


def _holder_when_written(fd: int, wait_s: float = 1.0) -> dict:
    """The holder's record, waiting briefly for it: a job that has just taken the lock writes its record a moment
    later, and an error that names the other job is worth a short wait."""
    deadline = time.monotonic() + wait_s
    while True:
        holder = _read_holder(fd)
        if holder or time.monotonic() >= deadline:
            return holder
        time.sleep(0.02)


@contextlib.contextmanager
def output_lock(
    folder: str | os.PathLike,
    what: str = "clipforge train",
    *,
    hint: str = "wait for it or use another --output_dir",
) -> Iterator[Path]:
    """Hold `FOLDER/.lock` for the block (creating the folder); raise FolderInUseError if another process holds it.

    `what` names this job in the lock file, so that the next job's error says what holds the folder;
    `hint` ends that error (what the user should do). Yields the lock file's path. Not re-entrant
    within one process: a second `output_lock` on the same folder also raises (flock locks belong to
    an open file, not to a process), which is what a second run started from a test or notebook needs.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    if fcntl is None:  # pragma: no cover - see the module docstring
        yield path
        return
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)  # the umask applies, like any other file
    except OSError as exc:
        raise OSError(exc.errno, f"cannot create the lock file {path}: {exc.strerror}", str(path)) from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FolderInUseError(folder, _holder_when_written(fd), hint) from None
        record = {"pid": os.getpid(), "host": socket.gethostname(), "what": what}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode("utf-8"), 0)
        try:
            yield path
        finally:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)  # the folder is free again: nothing to name
    finally:
        os.close(fd)  # releases the flock
