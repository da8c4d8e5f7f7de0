"""Reading input files safely: only regular files, never more bytes than a cap.

Data folders and CSV files name paths that a job then opens. A plain `open()` of a FIFO blocks until some
process writes to it (one stray named pipe called `photo.jpg` hangs a whole job, and a training process blocked
in `open()` ignores SIGTERM), and reading `/dev/zero` or a huge file "whole" exhausts memory. Every place the
data layer opens a file it was told about goes through here:

- `open_regular_file(path)`: opened non-blocking (so a FIFO cannot block the open), checked with fstat on the
  open descriptor (no race between the check and the read), refused unless it is a regular file, then switched
  back to blocking reads;
- `read_regular_file(path, max_bytes)`: the same, read whole, refused (before reading) when larger than
  `max_bytes`, and read with `max_bytes + 1` as the limit so a file growing under us cannot exceed it either.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import BinaryIO

DEFAULT_MAX_IMAGE_BYTES = 256 * 2**20  # 256 MiB: far above any real photo, far below what exhausts memory
DEFAULT_MAX_TEXT_BYTES = 2**20  # 1 MiB for a caption file: CLIP reads 77 tokens of it


class _PathError(OSError):
    """An OSError that reads "PATH: what is wrong" (not "[Errno 22] ...: 'PATH'")."""

    def __str__(self) -> str:
        return f"{self.filename}: {self.strerror}" if self.filename is not None else str(self.strerror)


class NotRegularFileError(_PathError):
    """A path names a FIFO, socket or device instead of a regular file."""


class FileTooLargeError(_PathError):
    """A file holds more bytes than the caller's cap."""


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def _a(noun: str) -> str:
    return f"{'an' if noun[:1] in 'aeiou' else 'a'} {noun}"


def open_regular_file(path: str | os.PathLike | bytes, what: str = "file") -> BinaryIO:
    """Open `path` for reading bytes, refusing anything but a regular file (without ever blocking on it).

    Raises FileNotFoundError / PermissionError as `open` would, IsADirectoryError for a folder, and
    NotRegularFileError (an OSError naming the path and what it is) for a FIFO, socket or device; `what` is
    what the message calls the file ("image", "caption file", ...).
    """
    nonblock = getattr(os, "O_NONBLOCK", 0)
    fd = os.open(path, os.O_RDONLY | nonblock)
    try:
        mode = os.fstat(fd).st_mode
        name = os.fsdecode(path)
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, f"is a folder; give {_a(what)}", name)
        if not stat.S_ISREG(mode):
            raise NotRegularFileError(errno.EINVAL, f"{_kind(mode)}, not a regular {what}; remove it or skip it", name)
        if nonblock:
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular_file(
    path: str | os.PathLike | bytes, max_bytes: int | None = DEFAULT_MAX_IMAGE_BYTES, what: str = "file"
) -> bytes:
    """The bytes of the regular file `path`; FileTooLargeError (naming the size and the cap) above `max_bytes`.

    `max_bytes=None` reads any size (only for files the caller trusts to fit in memory).
    """
    with open_regular_file(path, what) as file:
        if max_bytes is None:
            return file.read()
        size = os.fstat(file.fileno()).st_size
        if size > max_bytes:
            raise _too_large(path, what, size, max_bytes)
        data = file.read(max_bytes + 1)
    if len(data) > max_bytes:  # grew after the fstat
        raise _too_large(path, what, len(data), max_bytes)
    return data


def _too_large(path: str | os.PathLike | bytes, what: str, size: int, max_bytes: int) -> FileTooLargeError:
    return FileTooLargeError(
        errno.EFBIG,
        f"{what} of {size:,} bytes, over the limit of {max_bytes:,} bytes (a guard against reading huge or "
        "endless files into memory); raise the limit if the file is trusted",
        os.fsdecode(path),
    )


DEFAULT_MAX_TEXT_FILE_BYTES = 16 * 2**20  # 16 MiB: far above any template, description or hierarchy file


def read_text_file(
    path: str | os.PathLike | bytes, max_bytes: int | None = DEFAULT_MAX_TEXT_FILE_BYTES, what: str = "text file"
) -> str:
    """The UTF-8 text of the regular file `path` (a BOM is dropped), read under the same guards as
    `read_regular_file`; undecodable bytes are a ValueError naming the file, the line and the byte offset."""
    data = read_regular_file(path, max_bytes, what)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ValueError(
            f"{os.fsdecode(path)}: line {line} (byte offset {exc.start}) is not UTF-8 text ({exc.reason}); "
            "re-save the file as UTF-8"
        ) from exc
