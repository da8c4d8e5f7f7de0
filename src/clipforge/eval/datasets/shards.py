"""WebDataset tar shards as evaluation sets ("wds"): classification from `.cls` / json "label", retrieval from `.txt`.

The shard spec is clipforge.data's (brace expansion, "::"-joined specs, a folder of .tar files, fsspec URLs); a
root folder with a SPLIT sub-folder of shards (clip_benchmark's layout: ROOT/test/0.tar, ROOT/classnames.txt,
ROOT/zeroshot_classification_templates.txt) is read from that sub-folder. The shards are read once, front to back,
to index the samples: images in local uncompressed tars are then read by offset, others are kept in memory.

Classification: the label is the integer in `.cls`, or json "label" (an integer, or a class name). Integer labels
need class names: the `classnames` option, else a `classnames.txt` (one per line) beside the shards or one folder
up. Retrieval: each non-empty line of `.txt` is a caption (else json "captions" or "caption").
"""

from __future__ import annotations

import json
import os
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from clipforge.data.shardspec import expand_shards, is_url, open_binary
from clipforge.data.tarsamples import IMAGE_EXTS, split_key
from clipforge.image import load_image
from clipforge.models.config import ConfigError
from clipforge.zeroshot import get_templates

from .base import ClassificationSet, DatasetNotFound, RetrievalSet, fingerprint

WDS_LAYOUT = (
    "WebDataset shards 'dir/shard-{000000..000009}.tar' (or a folder of .tar files, or ROOT/SPLIT/*.tar), samples "
    "KEY.jpg + KEY.cls or KEY.json {'label': ...} (classification) or KEY.txt (retrieval)"
)
_PLAIN_TAR_EXTS = (".tar",)
_COMPRESSED_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ")


@dataclass(frozen=True)
class TarImages:
    """Images in shards: (url, offset, size) for local plain tars, the bytes otherwise; `labels` name them."""

    where: tuple[tuple[str, int, int] | bytes, ...] = field(repr=False)
    labels: tuple[str, ...] = field(repr=False)

    def __call__(self, i: int) -> Image.Image:
        item = self.where[i]
        if isinstance(item, bytes):
            return load_image(item, name=self.labels[i])
        path, offset, size = item
        with open(path, "rb") as file:
            file.seek(offset)
            return load_image(file.read(size), name=self.labels[i])


def _seekable(url: str) -> bool:
    if is_url(url) or not url.endswith(_PLAIN_TAR_EXTS):
        return False
    with open(url.removeprefix("file://"), "rb") as file:
        head = file.read(6)
    return not head.startswith(_COMPRESSED_MAGIC)


def _read_shard(url: str) -> list[tuple[str, dict[str, bytes], tuple[str, int, int] | bytes, str]]:
    """(key, small parts, image location or bytes, image label) per sample with an image, in tar order."""
    seekable = _seekable(url)
    local = url.removeprefix("file://")
    samples: list = []
    key, parts, image = None, {}, None

    def flush() -> None:
        if key is None:
            return
        if image is None:
            raise ValueError(f"{url}: sample {key!r} has no image ({', '.join(sorted(parts))})")
        samples.append((key, parts, image[0], image[1]))

    with open_binary(url) as file, tarfile.open(fileobj=file, mode="r|*") as tar:
        for member in tar:
            parsed = split_key(member.name) if member.isfile() else None
            if parsed is None:
                continue
            if parsed[0] != key:
                flush()
                key, parts, image = parsed[0], {}, None
            ext = parsed[1]
            if ext in IMAGE_EXTS and image is None:
                label = f"{url}/{member.name}"
                if seekable:
                    image = ((local, member.offset_data, member.size), label)
                else:
                    image = (tar.extractfile(member).read(), label)
            elif ext in ("cls", "txt", "json"):
                parts[ext] = tar.extractfile(member).read()
        flush()
    return samples


def _label(parts: dict[str, bytes], where: str) -> int | str | None:
    if "cls" in parts:
        return int(parts["cls"].decode("utf-8").strip())
    if "json" in parts:
        meta = json.loads(parts["json"].decode("utf-8"))
        if isinstance(meta, dict) and isinstance(meta.get("label"), (int, str)):
            return meta["label"]
    return None


def _captions(parts: dict[str, bytes]) -> tuple[str, ...]:
    if "txt" in parts:
        return tuple(line.strip() for line in parts["txt"].decode("utf-8").splitlines() if line.strip())
    if "json" in parts:
        meta = json.loads(parts["json"].decode("utf-8"))
        if isinstance(meta, dict):
            found = meta.get("captions", meta.get("caption"))
            found = [found] if isinstance(found, str) else found or []
            return tuple(c.strip() for c in found if isinstance(c, str) and c.strip())
    return ()


def _beside(urls: list[str], name: str) -> Path | None:
    """`name` in the folder of the first (local) shard or one folder up."""
    if is_url(urls[0]):
        return None
    folder = Path(urls[0].removeprefix("file://")).parent
    for candidate in (folder / name, folder.parent / name):
        if candidate.is_file():
            return candidate
    return None


def _lines(path: Path) -> list[str]:
    return [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]


def _resolve_urls(root: str | None, split: str) -> list[str]:
    if root is None:
        raise DatasetNotFound("wds", root, WDS_LAYOUT)
    spec = os.path.join(root, split) if os.path.isdir(os.path.join(root, split)) else root
    try:
        urls = expand_shards(spec)
    except ConfigError as exc:
        raise DatasetNotFound("wds", spec, WDS_LAYOUT) from exc
    missing = [u for u in urls if not is_url(u) and not os.path.isfile(u.removeprefix("file://"))]
    if missing:
        raise DatasetNotFound("wds", missing[0], WDS_LAYOUT)
    return urls


def load_wds(
    root: str | None,
    split: str = "test",
    *,
    task: str | None = None,
    classnames: Sequence[str] | str | None = None,
    templates: str | None = None,
) -> ClassificationSet | RetrievalSet:
    """WebDataset shards named by the spec `root` (or ROOT/SPLIT when that folder exists).

    Args:
        task: "classification" or "retrieval"; by default classification when the first sample has a label.
        classnames: class names indexed by integer label, or a file with one per line.
        templates: a template set name or file; by default zeroshot_classification_templates.txt beside the
            shards when there is one, else "simple".
    """
    urls = _resolve_urls(root, split)
    samples = [s for url in urls for s in _read_shard(url)]
    if not samples:
        raise ValueError(f"wds: no samples in {urls[0]} ... ({len(urls)} shards)")
    if task is None:
        task = "classification" if _label(samples[0][1], samples[0][3]) is not None else "retrieval"
    where = tuple(s[2] for s in samples)
    names = tuple(s[3] for s in samples)
    print_id = fingerprint("wds", split, root, names)
    if task == "retrieval":
        captions = tuple(_captions(s[1]) for s in samples)
        missing = [names[i] for i, c in enumerate(captions) if not c]
        if missing:
            raise ValueError(f"wds: samples without a caption (.txt): {missing[:3]}")
        return RetrievalSet("wds", split, captions, print_id, TarImages(where, names))
    if task != "classification":
        raise ValueError(f"wds: task must be 'classification' or 'retrieval', got {task!r}")
    raw = [_label(s[1], s[3]) for s in samples]
    missing = [names[i] for i, v in enumerate(raw) if v is None]
    if missing:
        raise ValueError(f"wds: samples without a label (.cls or json 'label'): {missing[:3]}")
    if isinstance(classnames, str):
        classnames = _lines(Path(classnames))
    if all(isinstance(v, str) for v in raw) and classnames is None:
        classnames = sorted(set(raw))
    if classnames is None:
        found = _beside(urls, "classnames.txt")
        if found is None:
            raise ValueError(
                "wds: integer labels need class names: pass classnames=[...] or put classnames.txt beside the shards"
            )
        classnames = _lines(found)
    index = {c: i for i, c in enumerate(classnames)}
    unknown = sorted({v for v in raw if isinstance(v, str) and v not in index})
    if unknown:
        raise ValueError(f"wds: labels not among the class names: {unknown[:5]}")
    labels = tuple(v if isinstance(v, int) else index[v] for v in raw)
    if templates is None:
        found = _beside(urls, "zeroshot_classification_templates.txt")
        templates = str(found) if found is not None else "simple"
    return ClassificationSet(
        "wds", split, tuple(classnames), tuple(get_templates(templates)), labels, print_id, TarImages(where, names)
    )
