"""Shard specs and opening them: "dir/shard-{000000..000009}.tar" -> a list of URLs -> readable files.

The spec syntax is WebDataset's (github.com/webdataset/webdataset, braceexpand): `{a..b}` is an inclusive integer
range, zero-padded to the wider bound when either bound has a leading zero; `{x,y,z}` is a list; several braces
multiply out left to right; several specs are joined with "::". A plain local directory stands for the sorted
.tar files inside it. Local paths are opened with `open`; anything with a URL scheme (s3://, gs://, http://,
...) with `fsspec.open`, so every filesystem fsspec knows works.
"""

from __future__ import annotations

import os
import re
from typing import IO

from clipforge.models.config import ConfigError
from clipforge.safeio import open_regular_file

_BRACE = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def expand_braces(pattern: str) -> list[str]:
    """All strings a brace pattern stands for, in order: "a{1..3}" -> ["a1", "a2", "a3"]."""
    match = _BRACE.search(pattern)
    if match is None:
        return [pattern]
    head, body, tail = pattern[: match.start()], match.group(1), pattern[match.end() :]
    ranged = _RANGE.match(body)
    if ranged:
        lo_text, hi_text = ranged.groups()
        lo, hi = int(lo_text), int(hi_text)
        padded = any(len(t.lstrip("-")) > 1 and t.lstrip("-").startswith("0") for t in (lo_text, hi_text))
        width = max(len(lo_text), len(hi_text)) if padded else 0
        step = 1 if hi >= lo else -1
        choices = [str(v).zfill(width) for v in range(lo, hi + step, step)]
    elif "," in body:
        choices = body.split(",")
    else:  # not an expansion (e.g. a literal "{}" in a name): keep it
        return [head + "{" + body + "}" + item for item in expand_braces(tail)]
    return [head + choice + rest for choice in choices for rest in expand_braces(tail)]


def is_url(path: str) -> bool:
    """Whether `path` is a remote URL for fsspec (file:// counts as local)."""
    return _SCHEME.match(path) is not None and not path.startswith("file://")


def _local(path: str) -> str:
    return path[len("file://") :] if path.startswith("file://") else path


def expand_shards(spec: str) -> list[str]:
    """The shard URLs/paths of a spec ("::"-joined brace patterns, or local directories of .tar files)."""
    urls: list[str] = []
    for part in spec.split("::"):
        part = part.strip()
        if not part:
            continue
        if not is_url(part) and os.path.isdir(_local(part)):
            folder = _local(part)
            names = sorted(n for n in os.listdir(folder) if n.endswith((".tar", ".tar.gz", ".tgz")))
            urls.extend(os.path.join(folder, n) for n in names)
        else:
            urls.extend(expand_braces(part))
    if not urls:
        raise ConfigError(f"shard spec {spec!r} names no shards")
    return urls


class ShardsNotFoundError(ConfigError, FileNotFoundError):
    """Local shards of a spec do not exist: a mistyped path or range, said up front rather than as an empty epoch."""


def check_local_shards(spec: str, urls: list[str]) -> None:
    """Raise ShardsNotFoundError naming the missing local shards, ConfigError for a local shard that is not a regular
    file (URLs are not checked: listing them is costly)."""
    local = [url for url in urls if not is_url(url)]
    odd = [url for url in local if os.path.exists(_local(url)) and not os.path.isfile(_local(url))]
    if odd:  # a folder, FIFO or device where a shard should be: reading a FIFO would block forever
        shown = ", ".join(odd[:3]) + (f" and {len(odd) - 3} more" if len(odd) > 3 else "")
        raise ConfigError(f"shard spec {spec!r}: not a regular file: {shown}; a shard must be a .tar file")
    missing = [url for url in local if not os.path.isfile(_local(url))]
    if not missing:
        return
    shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
    folder = os.path.dirname(_local(missing[0])) or "."
    where = "" if os.path.isdir(folder) else f"; the folder {folder} does not exist"
    raise ShardsNotFoundError(
        f"shard spec {spec!r}: {len(missing)} of {len(urls)} shard(s) not found: {shown}{where}; "
        "check the path and the {first..last} range"
    )


def open_binary(url: str) -> IO[bytes]:
    """Open a local path or an fsspec URL for reading bytes; a local path must be a regular file (a FIFO named
    shard.tar would block the reader forever: NotRegularFileError, an OSError, instead)."""
    if not is_url(url):
        return open_regular_file(_local(url), what="shard")
    import fsspec

    return fsspec.open(url, "rb").open()


def sibling(url: str, name: str) -> str:
    """The URL/path of file `name` in the same folder as `url`."""
    return url.rsplit("/", 1)[0] + "/" + name if "/" in url else name
