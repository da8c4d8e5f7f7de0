"""Evaluation sets that install from package managers: Fashion-MNIST, the Tux Paint stamps, simulated textiles.

Fashion-MNIST (Xiao et al. 2017; Debian `dataset-fashion-mnist`) and the Tux Paint stamps (Debian
`tuxpaint-stamps-default`) are read through clipforge.data's loaders. The simulated textile inspection images
(PyPI `conformal-clip-data`, MIT) are 1000 nominal, 500 local-defect and 500 global-defect 250x250 grey images in
conformal_clip_data/data/textile_images/simulated/{nominal,local,global}/; the whole set is the "test" split, and
a `seed` gives a deterministic stratified train/test split instead.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np

from clipforge.data.builtins import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_INSTALL,
    FASHION_MNIST_ROOT,
    FASHION_TEST_TEMPLATES,
    TUXPAINT_INSTALL,
    TUXPAINT_ROOT,
    load_fashion_mnist,
    load_tuxpaint_pairs,
)

from .base import (
    ArrayImages,
    ClassificationSet,
    DatasetNotFound,
    PathImages,
    RetrievalSet,
    check_split,
    fingerprint,
    readable_name,
)
from .folder import IMAGE_SUFFIXES

FASHION_LAYOUT = "ROOT/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz (the Debian package's files)"
TUXPAINT_LAYOUT = "ROOT/CATEGORY/.../NAME.png with NAME.txt (first line: an English caption)"
TEXTILE_LAYOUT = "ROOT/{nominal,local,global}/*.jpg (conformal_clip_data/data/textile_images/simulated)"
TEXTILE_INSTALL = "pip install conformal-clip-data"
TEXTILE_FOLDERS = ("nominal", "local", "global")
TEXTILE_CLASSES = ("nominal", "local defect", "global defect")
# The class name reads as the state of the fabric: "a photo of a textile with a local defect" would not fit
# "nominal", so the name comes last, after a colon or "showing".
TEXTILE_TEMPLATES = (
    "a photo of a textile sample: {}.",
    "a grey close-up photo of woven fabric: {}.",
    "an inspection image of a textile surface showing {}.",
    "a fabric inspection photo, {}.",
    "a textile: {}.",
)
TUXPAINT_FOLDER_NAMES = {"naturalforces": "natural forces"}
TUXPAINT_TEMPLATES = (
    "a picture of {}.",
    "a clip art image of {}.",
    "a cut-out photo of {}.",
    "a sticker showing {}.",
    "a drawing of {}.",
)


def load_fashion(root: str | None, split: str = "test", *, shift: str | None = None) -> ClassificationSet:
    """Fashion-MNIST train (60,000) or test (10,000), with FASHION_TEST_TEMPLATES.

    Args:
        shift: a distribution shift from clipforge.eval.shifts (e.g. "invert": dark garments on white) applied
            to every image, for out-of-distribution evaluation (a ShiftedView, with the set's protocol and a
            fingerprint naming the shift); None: the images as they are.
    """
    check_split("fashion_mnist", split, ["train", "test"])
    if shift is not None:
        from ..shifts import check_shift, shift_dataset

        check_shift(shift)
        return shift_dataset(load_fashion(root, split), shift)
    root = root or FASHION_MNIST_ROOT
    try:
        images, labels, _ = load_fashion_mnist(split, root)
    except FileNotFoundError as exc:
        raise DatasetNotFound("fashion_mnist", root, FASHION_LAYOUT, FASHION_MNIST_INSTALL) from exc
    prefix = "train" if split == "train" else "t10k"
    return ClassificationSet(
        name="fashion_mnist",
        split=split,
        classnames=FASHION_MNIST_CLASSES,
        templates=FASHION_TEST_TEMPLATES,
        labels=tuple(labels.tolist()),
        fingerprint=fingerprint("fashion_mnist", split, root, [f"{prefix}:{len(labels)}"]),
        images=ArrayImages(images, f"fashion_mnist/{split}"),
    )


def load_tuxpaint(
    root: str | None, split: str = "test", *, task: str = "retrieval"
) -> ClassificationSet | RetrievalSet:
    """All stamps with an English caption: retrieval on the captions, or coarse classification by top folder."""
    check_split("tuxpaint", split, ["test"])
    root = root or TUXPAINT_ROOT
    try:
        pairs = load_tuxpaint_pairs(root)
    except FileNotFoundError as exc:
        raise DatasetNotFound("tuxpaint", root, TUXPAINT_LAYOUT, TUXPAINT_INSTALL) from exc
    if task == "classification":
        pairs = [p for p in pairs if p[2]]  # stamps directly under root have no class
    if not pairs:
        raise DatasetNotFound("tuxpaint", root, TUXPAINT_LAYOUT, TUXPAINT_INSTALL)
    paths = tuple(p[0] for p in pairs)
    print_id = fingerprint("tuxpaint", split, root, [os.path.relpath(p, root) for p in paths])
    if task == "retrieval":
        return RetrievalSet("tuxpaint", split, tuple((p[1],) for p in pairs), print_id, PathImages(paths))
    if task != "classification":
        raise ValueError(f"tuxpaint: task must be 'retrieval' or 'classification', got {task!r}")
    folders = sorted({p[2] for p in pairs})
    index = {f: i for i, f in enumerate(folders)}
    return ClassificationSet(
        name="tuxpaint",
        split=split,
        classnames=tuple(TUXPAINT_FOLDER_NAMES.get(f, readable_name(f)) for f in folders),
        templates=TUXPAINT_TEMPLATES,
        labels=tuple(index[p[2]] for p in pairs),
        fingerprint=print_id,
        images=PathImages(paths),
    )


def textile_root() -> str | None:
    """The simulated textile folder of the installed conformal-clip-data package, or None."""
    spec = importlib.util.find_spec("conformal_clip_data")
    if spec is None or not spec.submodule_search_locations:
        return None
    return str(Path(next(iter(spec.submodule_search_locations))) / "data" / "textile_images" / "simulated")


def load_textile(
    root: str | None, split: str = "test", *, seed: int | None = None, test_fraction: float = 0.5
) -> ClassificationSet:
    """Simulated textile images in 3 classes; all of them as "test", or a seeded stratified train/test split.

    Args:
        seed: None: split must be "test" and holds every image. An int: each class is shuffled with this seed
            and its first round(n * test_fraction) images are "test", the rest "train" (same seed, same split).
        test_fraction: the share of each class in "test" when seeded, in (0, 1).
    """
    check_split("textile", split, ["test"] if seed is None else ["train", "test"])
    if not 0 < test_fraction < 1:
        raise ValueError(f"textile: test_fraction must be in (0, 1), got {test_fraction}")
    root = root or textile_root()
    base = Path(root) if root else None
    if base is None or not all((base / f).is_dir() for f in TEXTILE_FOLDERS):
        raise DatasetNotFound("textile", root, TEXTILE_LAYOUT, TEXTILE_INSTALL)
    paths: list[str] = []
    labels: list[int] = []
    rng = np.random.default_rng(seed) if seed is not None else None
    for label, folder in enumerate(TEXTILE_FOLDERS):
        found = sorted(str(p) for p in (base / folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if rng is not None:
            order = rng.permutation(len(found))
            n_test = round(len(found) * test_fraction)
            keep = sorted(order[:n_test] if split == "test" else order[n_test:])
            found = [found[i] for i in keep]
        paths.extend(found)
        labels.extend([label] * len(found))
    name_split = split if seed is None else f"{split}-seed{seed}-{test_fraction}"
    return ClassificationSet(
        name="textile",
        split=split,
        classnames=TEXTILE_CLASSES,
        templates=TEXTILE_TEMPLATES,
        labels=tuple(labels),
        fingerprint=fingerprint("textile", name_split, base, [os.path.relpath(p, base) for p in paths]),
        images=PathImages(tuple(paths)),
    )
