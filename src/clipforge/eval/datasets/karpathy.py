"""Flickr30k and MS-COCO retrieval with Karpathy's splits (Karpathy & Fei-Fei 2015): 1,000 / 5,000 test images.

The annotations are Karpathy's dataset_flickr30k.json / dataset_coco.json: {"images": [{"filename", "filepath"
(COCO only: "val2014", ...), "split": "train" | "val" | "test" | "restval", "sentences": [{"raw": ...}, ...]}]}.
Each image has its ~5 captions ("raw", stripped), in file order. The image of an entry is looked up under the
first of these folders that has it: the `images` option, ROOT/flickr30k-images, ROOT/images, ROOT/Images, ROOT;
COCO's "filepath" is joined in between (ROOT/val2014/COCO_val2014_...jpg).
"""

from __future__ import annotations

import json
from pathlib import Path

from .base import DatasetNotFound, PathImages, RetrievalSet, check_split, fingerprint

SPLITS = ("test", "val", "train", "restval")
_IMAGE_DIRS = ("flickr30k-images", "images", "Images", "")


def _layout(name: str) -> str:
    if name == "coco":
        return "ROOT/dataset_coco.json (Karpathy split) + ROOT/{val2014,train2014}/COCO_*.jpg"
    return "ROOT/dataset_flickr30k.json (Karpathy split) + ROOT/flickr30k-images/*.jpg"


def load_karpathy(
    name: str, root: str | None, split: str = "test", *, annotations: str | None = None, images: str | None = None
) -> RetrievalSet:
    """Flickr30k ("flickr30k") or COCO ("coco") images of one Karpathy split with all their captions.

    Args:
        annotations: the Karpathy JSON file; by default ROOT/dataset_{name}.json.
        images: the image folder; by default the first of ROOT/flickr30k-images, ROOT/images, ROOT/Images, ROOT
            that holds the split's first image.
    """
    check_split(name, split, SPLITS)
    if root is None and (annotations is None or images is None):
        raise DatasetNotFound(name, root, _layout(name))
    json_path = Path(annotations) if annotations else Path(root) / f"dataset_{name}.json"
    if not json_path.is_file():
        raise DatasetNotFound(name, json_path, _layout(name))
    with open(json_path, encoding="utf-8") as file:
        entries = json.load(file)["images"]
    chosen = [e for e in entries if e.get("split") == split]
    if not chosen:
        raise ValueError(f"{json_path}: no images in split {split!r}")
    relative = [str(Path(e.get("filepath", "")) / e["filename"]) for e in chosen]
    folders = [Path(images)] if images else [Path(root) / d for d in _IMAGE_DIRS]
    base = next((f for f in folders if (f / relative[0]).is_file()), None)
    if base is None:
        raise DatasetNotFound(name, folders[0] / relative[0], _layout(name))
    captions = tuple(tuple(s["raw"].strip() for s in e["sentences"] if s.get("raw", "").strip()) for e in chosen)
    return RetrievalSet(
        name=name,
        split=split,
        captions=captions,
        fingerprint=fingerprint(name, split, base, relative),
        images=PathImages(tuple(str(base / r) for r in relative)),
    )
