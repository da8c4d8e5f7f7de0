"""Class-folder datasets: any ImageFolder-style tree ("folder") and ImageNet's validation set ("imagenet").

"folder": root/CLASS_NAME/*.jpg (torchvision's ImageFolder layout); the classes are the sorted sub-folder names,
read as natural language ("golden_retriever" -> "golden retriever"). "imagenet": the ILSVRC-2012 validation set
(Russakovsky et al. 2015) sorted into its 1000 wnid folders (root/n01440764/*.JPEG, the layout of the usual
`valprep.sh`); the class names are the CLIP paper's cleaned ImageNet names (Radford et al. 2021), which follow the
sorted wnid order, and the templates its 80-prompt ensemble.
"""

from __future__ import annotations

import os
from pathlib import Path

from clipforge.zeroshot import get_templates, imagenet_classnames

from .base import ClassificationSet, DatasetNotFound, PathImages, fingerprint, readable_name

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm")
FOLDER_LAYOUT = "ROOT/CLASS_NAME/*.jpg (one sub-folder per class; or ROOT/SPLIT/CLASS_NAME/*.jpg)"
IMAGENET_LAYOUT = "ROOT/n01440764/*.JPEG ... (the 1000 wnid folders of ILSVRC-2012 val; or ROOT/val/nXXXXXXXX/)"


def _class_dirs(folder: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def _scan(base: Path, class_dirs: list[str]) -> tuple[list[str], list[int]]:
    """(image paths, labels), sorted by class then by relative path; hidden files and non-images left out.

    Anything with an image suffix that is not a folder is listed, FIFOs, devices and broken links included: the
    encoder then skips each with its reason, so the report counts and names them instead of silently running
    on fewer images than the folder seems to hold.
    """
    paths, labels = [], []
    for label, cls in enumerate(class_dirs):
        found = sorted(
            p
            for p in (base / cls).rglob("*")
            if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and not p.is_dir()
        )
        paths.extend(str(p) for p in found)
        labels.extend([label] * len(found))
    return paths, labels


def _relative(paths: list[str], base: Path) -> list[str]:
    return [os.path.relpath(p, base) for p in paths]


def load_folder(
    root: str | None, split: str = "test", *, templates: str = "simple", name: str = "folder"
) -> ClassificationSet:
    """An image-folder tree; ROOT/SPLIT is used when it exists, else ROOT itself (the split is then a label).

    Args:
        templates: a built-in template set name ("simple", "imagenet", "photo") or a file of templates.
    """
    if root is None or not Path(root).is_dir():
        raise DatasetNotFound(name, root, FOLDER_LAYOUT)
    base = Path(root) / split if (Path(root) / split).is_dir() else Path(root)
    classes = _class_dirs(base)
    if not classes:
        raise DatasetNotFound(name, base, FOLDER_LAYOUT)
    paths, labels = _scan(base, classes)
    if not paths:
        raise DatasetNotFound(name, base, FOLDER_LAYOUT + f" (found class folders {classes[:5]} but no images)")
    return ClassificationSet(
        name=name,
        split=split,
        classnames=tuple(readable_name(c) for c in classes),
        templates=tuple(get_templates(templates)),
        labels=tuple(labels),
        fingerprint=fingerprint(name, split, base, _relative(paths, base)),
        images=PathImages(tuple(paths)),
    )


def load_imagenet(root: str | None, split: str = "test") -> ClassificationSet:
    """ImageNet validation images in wnid folders, with the CLIP paper's class names and 80 templates.

    "test" and "val" both mean the validation set (the test labels are not public); ROOT/val is used when it
    exists. All 1000 wnid folders must be present, since the names are matched to them by sorted order.
    """
    if split not in ("test", "val"):
        raise ValueError(f"imagenet: split must be 'test' or 'val' (the ILSVRC-2012 validation set), got {split!r}")
    if root is None or not Path(root).is_dir():
        raise DatasetNotFound("imagenet", root, IMAGENET_LAYOUT)
    base = Path(root) / "val" if (Path(root) / "val").is_dir() else Path(root)
    wnids = [d for d in _class_dirs(base) if len(d) == 9 and d[0] == "n" and d[1:].isdigit()]
    names = imagenet_classnames()
    if len(wnids) != len(names):
        raise DatasetNotFound(
            "imagenet", base, IMAGENET_LAYOUT + f" (found {len(wnids)} wnid folders, need all {len(names)})"
        )
    paths, labels = _scan(base, wnids)
    return ClassificationSet(
        name="imagenet",
        split=split,
        classnames=tuple(names),
        templates=tuple(get_templates("imagenet")),
        labels=tuple(labels),
        fingerprint=fingerprint("imagenet", split, base, _relative(paths, base)),
        images=PathImages(tuple(paths)),
    )
