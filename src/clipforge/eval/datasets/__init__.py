"""Evaluation datasets a user has locally, as `ClassificationSet` (zero-shot, linear probe) or `RetrievalSet`.

    load_eval_dataset(name, root=None, split="test", **options) -> ClassificationSet | RetrievalSet
    list_eval_datasets() -> ["cifar10", "cifar100", "coco", "csv", ...]

Module map: base.py (the set types, DatasetNotFound, fingerprints), folder.py ("folder", "imagenet"), table.py
("csv"), shards.py ("wds"), cifar.py ("cifar10", "cifar100"; restricted unpickling), karpathy.py ("flickr30k",
"coco"), packaged.py ("fashion_mnist", "tuxpaint", "textile"), collection.py ("openclipart", "emoji"). Class names
and templates follow the CLIP paper (Radford et al. 2021) where it evaluated the dataset. A dataset that is not
where it is looked for raises `DatasetNotFound`, naming the path, the expected layout and, for installable ones,
the install command.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from functools import partial

from .base import ClassificationSet, DatasetNotFound, RetrievalSet
from .cifar import RestrictedUnpickler, load_cifar, restricted_load
from .collection import load_emoji_set, load_openclipart_set
from .folder import load_folder, load_imagenet
from .karpathy import load_karpathy
from .packaged import load_fashion, load_textile, load_tuxpaint
from .shards import load_wds
from .table import load_csv

_LOADERS: dict[str, Callable[..., ClassificationSet | RetrievalSet]] = {
    "cifar10": partial(load_cifar, "cifar10"),
    "cifar100": partial(load_cifar, "cifar100"),
    "coco": partial(load_karpathy, "coco"),
    "csv": load_csv,
    "emoji": load_emoji_set,
    "fashion_mnist": load_fashion,
    "flickr30k": partial(load_karpathy, "flickr30k"),
    "folder": load_folder,
    "imagenet": load_imagenet,
    "openclipart": load_openclipart_set,
    "textile": load_textile,
    "tuxpaint": load_tuxpaint,
    "wds": load_wds,
}


def list_eval_datasets() -> list[str]:
    """The names `load_eval_dataset` accepts, sorted."""
    return sorted(_LOADERS)


def load_eval_dataset(
    name: str, root: str | None = None, split: str = "test", **options: object
) -> ClassificationSet | RetrievalSet:
    """The evaluation set `name` read from `root` (built-ins default to their install location).

    Options are per dataset (see each loader's docstring: e.g. csv's `path_column`, wds's `classnames`,
    tuxpaint's `task`, textile's `seed`); an unknown option raises ValueError listing the valid ones.
    """
    loader = _LOADERS.get(name)
    if loader is None:
        raise ValueError(f"unknown evaluation dataset {name!r}; known: {list_eval_datasets()}")
    params = inspect.signature(loader).parameters
    valid = sorted(n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"{name}: unknown option(s) {unknown}; valid options: {valid or 'none'}")
    return loader(None if root is None else str(root), split, **options)


__all__ = [
    "ClassificationSet",
    "DatasetNotFound",
    "RestrictedUnpickler",
    "RetrievalSet",
    "list_eval_datasets",
    "load_eval_dataset",
    "restricted_load",
]
