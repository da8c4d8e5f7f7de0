"""Reading WebDataset tar shards: members grouped by key into (image bytes, caption) samples.

The layout is img2dataset's (github.com/rom1504/img2dataset) and WebDataset's: consecutive tar members that share
a key (the path up to the first dot of the file name) form one sample, `000042.jpg` + `000042.txt` +
`000042.json`. The image is the first member with extension jpg, jpeg, png or webp; the caption is the UTF-8
text of `.txt`, else the "caption" field of `.json`. Tars are read as streams (`tarfile` mode "r|*", plain or
compressed), so a shard is read once, front to back, from local disk or any fsspec URL.

Nothing here decodes images: a sample whose image is corrupt is only found out when it is decoded for a batch.
What can be checked from the bytes alone (no image member, caption missing, empty or not UTF-8, a shard that
cannot be opened or ends early, a member whose header claims more than MAX_MEMBER_BYTES, which is skipped
unread) is reported here, as `BadSample`, so that skipping ahead for a resume sees exactly the same samples as
the run it resumes.
"""

from __future__ import annotations

import json
import re
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

from clipforge.safeio import DEFAULT_MAX_IMAGE_BYTES

from .bad import BadSample
from .shardspec import open_binary

IMAGE_EXTS: tuple[str, ...] = ("jpg", "jpeg", "png", "webp")
_KEY_EXT = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")  # WebDataset's base_plus_ext
_READ_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error, ValueError)
MAX_MEMBER_BYTES = DEFAULT_MAX_IMAGE_BYTES  # a larger member (by its tar header) is a bad sample, never read
_OVERSIZED = b"<oversized>"  # placeholder, told apart by identity


@dataclass(frozen=True)
class RawSample:
    """One undecoded sample.

    Fields:
        image: the encoded image bytes, or the path of an image file.
        caption: the caption, stripped, non-empty.
        name: the file or shard that bad-sample counts are keyed by.
        label: what error messages call the image (e.g. "shard-000003.tar/000000042.jpg").
    """

    image: bytes | str
    caption: str
    name: str
    label: str


def split_key(member_name: str) -> tuple[str, str] | None:
    """(key, extension) of a tar member name, or None for names without an extension or hidden files."""
    base = member_name.rsplit("/", 1)[-1]
    if base.startswith("."):
        return None
    match = _KEY_EXT.match(member_name)
    return (match.group(1), match.group(2).lower()) if match else None


def caption_from_parts(parts: dict[str, bytes], where: str) -> str:
    """The caption of a sample from its .txt (or .json "caption"); BadSample when missing, empty or undecodable."""
    if "txt" in parts:
        try:
            caption = parts["txt"].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadSample(where, f"caption is not UTF-8 ({exc.reason})") from exc
    elif "json" in parts:
        try:
            meta = json.loads(parts["json"].decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BadSample(where, f"undecodable json ({exc})") from exc
        caption = meta.get("caption") if isinstance(meta, dict) else None
        if not isinstance(caption, str):
            raise BadSample(where, "missing caption")
    else:
        raise BadSample(where, "missing caption")
    caption = caption.strip()
    if not caption:
        raise BadSample(where, "empty caption")
    return caption


def _sample(url: str, key: str, parts: dict[str, bytes]) -> RawSample:
    oversized = sorted(ext for ext, data in parts.items() if data is _OVERSIZED)
    if oversized:
        raise BadSample(url, f"sample {key!r}: member(s) {oversized} over {MAX_MEMBER_BYTES:,} bytes, not read")
    ext = next((e for e in IMAGE_EXTS if e in parts), None)
    if ext is None:
        raise BadSample(url, f"sample {key!r} has no image ({', '.join(sorted(parts))})")
    caption = caption_from_parts(parts, url)
    return RawSample(image=parts[ext], caption=caption, name=url, label=f"{url}/{key}.{ext}")


def iter_shard(url: str) -> Iterator[RawSample | BadSample]:
    """The samples of one shard in tar order; unusable ones (and a shard that fails to read) as BadSample."""
    key: str | None = None
    parts: dict[str, bytes] = {}
    try:
        with open_binary(url) as file, tarfile.open(fileobj=file, mode="r|*") as tar:
            for member in tar:
                parsed = split_key(member.name) if member.isfile() else None
                if parsed is None:
                    continue
                if parsed[0] != key:
                    if key is not None:
                        yield _finish(url, key, parts)
                    key, parts = parsed[0], {}
                if member.size > MAX_MEMBER_BYTES:  # not read: the stream skips its data
                    parts[parsed[1]] = _OVERSIZED
                    continue
                extracted = tar.extractfile(member)
                parts[parsed[1]] = extracted.read() if extracted is not None else b""
    except _READ_ERRORS as exc:  # unreadable or truncated shard: the sample being read is lost
        yield BadSample(url, f"cannot read shard: {type(exc).__name__}: {exc}")
        return
    if key is not None:
        yield _finish(url, key, parts)


def _finish(url: str, key: str, parts: dict[str, bytes]) -> RawSample | BadSample:
    try:
        return _sample(url, key, parts)
    except BadSample as bad:
        return bad


def count_shard_samples(url: str) -> int:
    """Number of keys with an image member in a shard, read from the tar headers (0 if unreadable)."""
    keys = set()
    try:
        with open_binary(url) as file, tarfile.open(fileobj=file, mode="r|*") as tar:
            for member in tar:
                parsed = split_key(member.name) if member.isfile() else None
                if parsed is not None and parsed[1] in IMAGE_EXTS:
                    keys.add(parsed[0])
    except _READ_ERRORS:
        pass
    return len(keys)
