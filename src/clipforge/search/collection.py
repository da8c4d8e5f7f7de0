"""A SOURCE for `clipforge index build`: enumerate the items of an image folder, a CSV/TSV of paths or WebDataset
shards (local or fsspec URLs) into `Item`s in a stable order, and read one item's image.

Enumeration is cheap and deterministic (a sorted listing, the CSV's row order, the shards' tar order), so every
torchrun rank computes the same plan without talking to the others, and `index update` can compare the items of
today with those embedded before by (key, size, mtime, caption, columns), as rclip compares files by size and
mtime. Nothing is decoded here: images are read by `read_image` in the DataLoader workers.

Items that cannot be an image at all (a FIFO, socket or device named x.jpg; a CSV row naming a folder) are skipped
here with a reason, never opened (a FIFO would block the reader forever); undecodable images are skipped later.
"""

from __future__ import annotations

import dataclasses
import json
import os
import stat
import tarfile
from dataclasses import dataclass
from typing import Any

from clipforge.data.csvfile import CsvColumnError, read_csv
from clipforge.data.shardspec import expand_shards, is_url, open_binary
from clipforge.data.sources.folder import list_images, read_caption_file
from clipforge.data.tarsamples import IMAGE_EXTS, MAX_MEMBER_BYTES, split_key
from clipforge.models.config import ConfigError
from clipforge.safeio import DEFAULT_MAX_TEXT_BYTES, read_regular_file

SOURCE_KINDS = ("folder", "csv", "webdataset")
PATH_COLUMNS = ("image_path", "filepath", "path", "image", "file")  # clip-retrieval, open_clip, common spellings
CAPTION_COLUMNS = ("caption", "title", "text")
_MAX_SIDE_BYTES = DEFAULT_MAX_TEXT_BYTES  # a .txt/.json member of a shard


@dataclass(frozen=True)
class SourceSpec:
    """What was embedded; recorded in info.json and manifest.json so that `index update` can enumerate it again.

    kind: folder | csv | webdataset; location: the absolute folder/CSV path, or the shard spec (braces allowed).
    path_column / caption_column: CSV columns (None: found from PATH_COLUMNS / CAPTION_COLUMNS)."""

    kind: str
    location: str
    path_column: str | None = None
    caption_column: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in SOURCE_KINDS:
            raise ConfigError(f"source kind {self.kind!r} is not one of {list(SOURCE_KINDS)}")

    def to_dict(self) -> dict[str, Any]:
        """The JSON form kept in info.json and manifest.json."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SourceSpec:
        """The spec `to_dict` wrote (ConfigError naming the record when it is not one)."""
        try:
            return cls(**{f.name: data.get(f.name) for f in dataclasses.fields(cls)})
        except TypeError as exc:
            raise ConfigError(f"source record {data!r} is not a clipforge source ({exc})") from exc


@dataclass(frozen=True)
class Item:
    """One image to embed.

    key: identity across runs (absolute path; `shard-url#sample-key` inside a shard). image_path: what the
    metadata's image_path column holds. url: the file (or shard) the bytes are read from; offset/length: where the
    image member's bytes are inside a shard (-1: the whole file). size/mtime_ns: of the file or shard, for
    `index update`'s change test (-1: unknown). columns: extra metadata (name, value as str or None)."""

    key: str
    image_path: str
    url: str
    caption: str | None = None
    columns: tuple[tuple[str, str | None], ...] = ()
    size: int = -1
    mtime_ns: int = -1
    offset: int = -1
    length: int = -1

    def signature(self) -> tuple:
        """What decides whether an item changed since it was embedded (rclip: size and mtime; plus the text)."""
        return (self.key, self.size, self.mtime_ns, self.caption, self.columns)


@dataclass(frozen=True)
class Enumeration:
    """The items of a source in order, the ones skipped with a reason, and whether the source has captions."""

    items: list[Item]
    skipped: list[dict[str, Any]]
    has_captions: bool
    column_names: tuple[str, ...]


def detect_source(
    source: str, *, path_column: str | None = None, caption_column: str | None = None
) -> SourceSpec:
    """A SourceSpec for what the user named: a folder, a .csv/.tsv file, or .tar shards (a path, URL or brace
    pattern such as `data/shard-{0000..0099}.tar`)."""
    if is_url(source) or source.endswith(".tar") or "{" in source:
        return SourceSpec("webdataset", source if is_url(source) else _absolute_spec(source))
    if os.path.isdir(source):
        return SourceSpec("folder", os.path.abspath(source))
    if source.lower().endswith((".csv", ".tsv")):
        return SourceSpec("csv", os.path.abspath(source), path_column, caption_column)
    if not os.path.exists(source):
        hint = "no such folder, CSV or shard; give an image folder, a .csv/.tsv or .tar shards"
        raise FileNotFoundError(2, hint, source)
    raise ConfigError(f"{source}: not a folder, a .csv/.tsv file or .tar shards; give one of those")


def _absolute_spec(spec: str) -> str:
    return spec if os.path.isabs(spec) or spec.startswith("file://") else os.path.join(os.path.abspath("."), spec)


def enumerate_source(spec: SourceSpec) -> Enumeration:
    """All items of `spec` in a stable order (see the module docstring)."""
    if spec.kind == "folder":
        return _enumerate_folder(spec.location)
    if spec.kind == "csv":
        return _enumerate_csv(spec)
    return _enumerate_shards(spec.location)


def _stat_regular(path: str) -> tuple[os.stat_result | None, str]:
    """(stat, "") for a regular file, (None, reason) otherwise; never opens the path."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None, "no such file"
    except OSError as exc:
        return None, f"cannot stat: {exc.strerror}"
    if stat.S_ISDIR(st.st_mode):
        return None, "is a folder, not an image file"
    if not stat.S_ISREG(st.st_mode):
        kind = "FIFO" if stat.S_ISFIFO(st.st_mode) else "socket" if stat.S_ISSOCK(st.st_mode) else "device"
        return None, f"a {kind}, not a regular image file; skipped without opening it"
    return st, ""


def _enumerate_folder(root: str) -> Enumeration:
    if not os.path.isdir(root):
        raise ConfigError(f"image folder {root} does not exist (or is not a folder)")
    items, skipped, captioned = [], [], False
    for path in list_images(root):
        st, reason = _stat_regular(path)
        if st is None:
            skipped.append({"image_path": path, "error": reason})
            continue
        caption = None
        side = os.path.splitext(path)[0] + ".txt"
        if os.path.lexists(side):
            try:
                caption = read_caption_file(side, path)
                captioned = True
            except Exception as exc:  # BadSample: a broken caption file leaves the image uncaptioned
                skipped.append({"image_path": side, "error": f"caption not used: {exc}"})
        items.append(Item(path, path, path, caption, (), st.st_size, st.st_mtime_ns))
    return Enumeration(items, skipped, captioned, ())


def _pick(header: tuple[str, ...], given: str | None, choices: tuple[str, ...], what: str, path: str) -> str | None:
    if given is not None:
        if given not in header:
            raise CsvColumnError(f"{path}: no {what} column {given!r}; the columns are {list(header)}", [given],
                                 list(header), "")
        return given
    return next((c for c in choices if c in header), None)


def _enumerate_csv(spec: SourceSpec) -> Enumeration:
    table = read_csv(spec.location)
    header = table.columns
    path_column = _pick(header, spec.path_column, PATH_COLUMNS, "image path", spec.location)
    if path_column is None:
        raise CsvColumnError(
            f"{spec.location}: no image path column (looked for {list(PATH_COLUMNS)}); the columns are "
            f"{list(header)}; name it with --path-column",
            list(PATH_COLUMNS),
            list(header),
            table.separator,
        )
    caption_column = _pick(header, spec.caption_column, CAPTION_COLUMNS, "caption", spec.location)
    extra = tuple(c for c in header if c not in (path_column, caption_column, "image_path", "caption"))
    base = os.path.dirname(spec.location)
    items, skipped = [], []
    for line, row in table.rows:
        written = row[path_column].strip()
        path = written if os.path.isabs(written) else os.path.normpath(os.path.join(base, written))
        st, reason = _stat_regular(path) if written else (None, "empty path")
        if st is None:
            skipped.append({"image_path": written, "error": f"line {line}: {reason}"})
            continue
        caption = row[caption_column] if caption_column else None
        columns = tuple((c, row[c]) for c in extra)
        items.append(Item(path, written, path, caption, columns, st.st_size, st.st_mtime_ns))
    return Enumeration(items, skipped, caption_column is not None, extra)


def _shard_stat(url: str) -> tuple[int, int]:
    if is_url(url):
        import fsspec

        fs, path = fsspec.core.url_to_fs(url)
        info = fs.info(path)
        mtime = info.get("mtime") or info.get("LastModified") or info.get("last_modified")
        if hasattr(mtime, "timestamp"):
            mtime_ns = int(mtime.timestamp() * 1e9)
        else:
            mtime_ns = int(float(mtime) * 1e9) if mtime is not None else -1  # unknown: a change shows in the size
        return int(info.get("size") or -1), mtime_ns
    st = os.stat(url[len("file://") :] if url.startswith("file://") else url)
    return st.st_size, st.st_mtime_ns


def _enumerate_shards(spec: str) -> Enumeration:
    urls = expand_shards(spec)
    items: list[Item] = []
    skipped: list[dict[str, Any]] = []
    columns: dict[str, None] = {}
    captioned = False
    for url in urls:
        try:
            size, mtime_ns = _shard_stat(url)
            samples = _shard_samples(url)
        except (OSError, tarfile.TarError, EOFError, ValueError) as exc:
            skipped.append({"image_path": url, "error": f"cannot read shard: {type(exc).__name__}: {exc}"})
            continue
        for key, found in samples:
            label = f"{url}/{key}"
            ext = next((e for e in IMAGE_EXTS if e in found), None)
            if ext is None:
                skipped.append({"image_path": label, "error": f"no image member ({', '.join(sorted(found))})"})
                continue
            offset, length = found[ext]
            if length > MAX_MEMBER_BYTES:
                skipped.append({"image_path": f"{label}.{ext}", "error": f"image over {MAX_MEMBER_BYTES:,} bytes"})
                continue
            caption, meta = found.get("txt_text"), found.get("json_meta") or {}
            if caption is None and isinstance(meta.get("caption"), str):
                caption = meta["caption"]
            captioned = captioned or caption is not None
            extra = tuple(
                (k, None if v is None else v if isinstance(v, str) else json.dumps(v))
                for k, v in sorted(meta.items())
                if k not in ("caption", "image_path")
            )
            columns.update(dict.fromkeys(k for k, _ in extra))
            items.append(
                Item(f"{url}#{key}", f"{label}.{ext}", url, caption, extra, size, mtime_ns, offset, length)
            )
    return Enumeration(items, skipped, captioned, tuple(columns))


def _shard_samples(url: str) -> list[tuple[str, dict[str, Any]]]:
    """(sample key, {ext: (offset, length), "txt_text": caption, "json_meta": dict}) in tar order.

    Reads the tar as a stream (only .txt/.json members' data, image data is skipped over) and records where each
    image's bytes are, so a worker later reads one image with one seek. Compressed tars have no such offsets."""
    samples: list[tuple[str, dict[str, Any]]] = []
    with open_binary(url) as file:
        head = file.read(2)
        if head == b"\x1f\x8b":
            raise ValueError("a gzip-compressed shard; index build reads images by offset: decompress it (.tar)")
        file.seek(0)
        with tarfile.open(fileobj=file, mode="r|") as tar:
            for member in tar:
                parsed = split_key(member.name) if member.isfile() else None
                if parsed is None:
                    continue
                key, ext = parsed
                if not samples or samples[-1][0] != key:
                    samples.append((key, {}))
                found = samples[-1][1]
                found[ext] = (member.offset_data, member.size)
                if ext in ("txt", "json") and member.size <= _MAX_SIDE_BYTES:
                    data = tar.extractfile(member).read()
                    try:
                        text = data.decode("utf-8")
                        if ext == "txt":
                            found["txt_text"] = text.strip()
                        else:
                            meta = json.loads(text)
                            found["json_meta"] = meta if isinstance(meta, dict) else {}
                    except (UnicodeDecodeError, json.JSONDecodeError):
                        pass  # an unreadable caption/metadata member: the image is still embedded
    return samples


def read_image_bytes(item: Item, max_bytes: int) -> bytes:
    """The encoded image of `item`: the whole file (a regular file of at most `max_bytes`), or its member's bytes
    inside a shard (one seek and read)."""
    if item.offset < 0:
        return read_regular_file(item.url, max_bytes, what="image")
    if item.length > max_bytes:
        raise OSError(f"{item.image_path}: {item.length:,} bytes, over the {max_bytes:,}-byte image cap")
    with open_binary(item.url) as file:
        file.seek(item.offset)
        data = file.read(item.length)
    if len(data) != item.length:
        raise OSError(f"{item.image_path}: shard ends early ({len(data)} of {item.length} bytes)")
    return data
