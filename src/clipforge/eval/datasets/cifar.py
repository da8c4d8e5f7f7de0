"""CIFAR-10 and CIFAR-100 (Krizhevsky 2009) from their "python version" releases, read without arbitrary unpickling.

Layouts: ROOT/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta} and
ROOT/cifar-100-python/{train, test, meta} (ROOT may also be that folder itself). Each batch is a pickled dict
(Python 2, hence encoding="bytes") of b"data" (N, 3072) uint8 rows, channel-major 32x32, and b"labels" (CIFAR-10)
or b"fine_labels" (CIFAR-100). The pickles are read through `RestrictedUnpickler`, which resolves only the numpy
array-reconstruction globals these files use: a file naming any other global (os.system, ...) is refused before
anything runs. Class names and the 18 prompt templates are the CLIP paper's (data/cifar.json).
"""

from __future__ import annotations

import importlib
import importlib.util
import io
import pickle
from pathlib import Path

import numpy as np

from .base import ArrayImages, ClassificationSet, DatasetNotFound, check_split, fingerprint, load_data

_NUMPY_CORE = "numpy._core" if importlib.util.find_spec("numpy._core") is not None else "numpy.core"
# (module, name) a CIFAR pickle may name -> (module, name) to import; numpy 2 moved numpy.core to numpy._core.
_ALLOWED = {
    ("numpy", "ndarray"): ("numpy", "ndarray"),
    ("numpy", "dtype"): ("numpy", "dtype"),
    ("_codecs", "encode"): ("_codecs", "encode"),  # how Python 3 pickles bytes at protocol 2
    **{
        (f"{core}.{mod}", fn): (f"{_NUMPY_CORE}.{mod}", fn)
        for core in ("numpy.core", "numpy._core")
        for mod, fn in (("multiarray", "_reconstruct"), ("multiarray", "scalar"), ("numeric", "_frombuffer"))
    },
}

_RELEASES = {
    "cifar10": {
        "folder": "cifar-10-batches-py",
        "splits": {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]},
        "meta": ("batches.meta", b"label_names"),
        "label_key": b"labels",
    },
    "cifar100": {
        "folder": "cifar-100-python",
        "splits": {"train": ["train"], "test": ["test"]},
        "meta": ("meta", b"fine_label_names"),
        "label_key": b"fine_labels",
    },
}


class RestrictedUnpickler(pickle.Unpickler):
    """An Unpickler that resolves only numpy array reconstruction; any other global raises UnpicklingError."""

    def find_class(self, module: str, name: str):  # noqa: ANN201 - what pickle expects
        """Allow only the numpy globals CIFAR pickles need; refuse anything else (no code runs)."""
        target = _ALLOWED.get((module, name))
        if target is None:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name} (only numpy arrays are allowed)")
        return getattr(importlib.import_module(target[0]), target[1])


def restricted_load(data: bytes | io.BufferedIOBase) -> object:
    """Unpickle Python-2-era data (bytes keys) allowing only plain containers and numpy arrays."""
    file = io.BytesIO(data) if isinstance(data, bytes) else data
    return RestrictedUnpickler(file, encoding="bytes").load()


def _layout(name: str) -> str:
    release = _RELEASES[name]
    files = sorted({f for names in release["splits"].values() for f in names} | {release["meta"][0]})
    return f"ROOT/{release['folder']}/{{{', '.join(files)}}} (the 'python version' release, extracted)"


def _load_batch(path: Path, label_key: bytes) -> tuple[np.ndarray, list[int]]:
    with open(path, "rb") as file:
        batch = restricted_load(file)
    if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
        raise ValueError(f"{path}: not a CIFAR batch (a dict with b'data' and {label_key!r})")
    data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)  # (N, C, H, W)
    return data, [int(v) for v in batch[label_key]]


def load_cifar(name: str, root: str | None, split: str = "test") -> ClassificationSet:
    """CIFAR-10 ("cifar10") or CIFAR-100 ("cifar100"), split "train" or "test"."""
    release = _RELEASES[name]
    check_split(name, split, list(release["splits"]))
    if root is None:
        raise DatasetNotFound(name, root, _layout(name))
    base = Path(root) if Path(root).name == release["folder"] else Path(root) / release["folder"]
    files = [base / f for f in release["splits"][split]]
    missing = [p for p in files if not p.is_file()]
    if missing:
        raise DatasetNotFound(name, missing[0], _layout(name))
    data = load_data("cifar.json")
    classnames = tuple(data[name])
    meta_path = base / release["meta"][0]
    if meta_path.is_file():  # the release's own names: only their count is checked, CLIP's wording is kept
        with open(meta_path, "rb") as file:
            meta = restricted_load(file)
        count = len(meta.get(release["meta"][1], classnames)) if isinstance(meta, dict) else len(classnames)
        if count != len(classnames):
            raise ValueError(f"{meta_path}: {count} classes, expected {len(classnames)} for {name}")
    arrays, labels = zip(*(_load_batch(p, release["label_key"]) for p in files))
    images = np.concatenate(arrays).transpose(0, 2, 3, 1)  # (N, 32, 32, 3)
    return ClassificationSet(
        name=name,
        split=split,
        classnames=classnames,
        templates=tuple(data["templates"]),
        labels=tuple(v for part in labels for v in part),
        fingerprint=fingerprint(name, split, base, [f"{p.name}:{len(a)}" for p, a in zip(files, arrays)]),
        images=ArrayImages(images, name),
    )
