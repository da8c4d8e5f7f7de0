"""The train/test pair a linear probe or few-shot classifier uses, guaranteed disjoint and recorded.

A dataset loader asked for a split it does not have may fall back to everything it has: `folder` reads
ROOT itself when ROOT/train does not exist, `csv` reads the one file it was given for every split, `wds`
reads ROOT when ROOT/SPLIT is absent. A probe "trained" on such a train split is trained on the test
images, and a random model on noise images then reports 0.9 top-1. So the pair is checked by item
identity (resolved file paths, shard members; see items.py), whatever the loader:

- the same items in both: a seeded, stratified, disjoint split is carved from them (`test_fraction` of
  each class is tested, the rest trains), or, with `test_fraction=None`, the task is refused;
- some items in both: refused, naming how many and one of them;
- no item in both (or a source that cannot be compared, e.g. CIFAR's arrays, read from distinct files
  per split): used as they are.

Either way `SplitPlan.policy` is one sentence saying which images trained and which were tested, and the
report carries it beside every number of the task.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .items import item_identities, item_location


class RowsView:
    """Rows `rows` of a ClassificationSet/RetrievalSet, with the same protocol (name, split, labels, load)."""

    def __init__(self, dataset: Any, rows: list[int], fingerprint: str, split: str | None = None) -> None:
        self.dataset, self.rows = dataset, list(rows)
        self.name, self.split = dataset.name, split or dataset.split
        self.fingerprint = fingerprint
        if hasattr(dataset, "labels"):
            self.labels = tuple(dataset.labels[i] for i in self.rows)
            self.classnames, self.templates = dataset.classnames, dataset.templates
        if hasattr(dataset, "captions"):
            self.captions = tuple(dataset.captions[i] for i in self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def load(self, index: int):
        """Item `index` of the view: the underlying dataset's row `rows[index]`."""
        return self.dataset.load(self.rows[index])


@dataclass(frozen=True)
class SplitPlan:
    """The sets a task trains and tests on, and one sentence saying where each came from."""

    train: Any
    test: Any
    carved: bool
    policy: str


def carve_rows(labels: list[int] | tuple[int, ...], test_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train rows, test rows): per class, a seeded shuffle; round(n * test_fraction) rows test, the rest train.

    Each class with at least two items keeps at least one on each side; a class with a single item trains
    (a probe cannot predict a class it never saw, so testing it alone measures nothing about the features).
    """
    if not 0 < test_fraction < 1:
        raise ValueError(f"the carved test fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    labels_arr = np.asarray(labels)
    train, test = [], []
    for label in np.unique(labels_arr):
        members = np.flatnonzero(labels_arr == label)
        order = members[rng.permutation(len(members))]
        n_test = 0 if len(members) < 2 else min(max(round(len(members) * test_fraction), 1), len(members) - 1)
        test.extend(order[:n_test].tolist())
        train.extend(order[n_test:].tolist())
    return sorted(train), sorted(test)


def _where(dataset: Any) -> str:
    location = item_location(dataset)
    return f" under {location}" if location else ""


def plan_train_test(
    train_set: Any, test_set: Any, *, test_fraction: float | None = 0.2, seed: int = 0
) -> SplitPlan:
    """Check that `train_set` and `test_set` share no image; carve a disjoint split when they are the same set.

    Args:
        test_fraction: share of each class tested when a split is carved; None refuses instead of carving.
        seed: the carving shuffle's seed (same seed, same split).
    """
    name = getattr(test_set, "name", "dataset")
    train_ids, test_ids = item_identities(train_set), item_identities(test_set)
    if train_ids is None or test_ids is None:
        policy = (
            f"train: split {train_set.split!r} ({len(train_set)} images); test: split {test_set.split!r} "
            f"({len(test_set)} images); separate sources as the {name} loader reads them"
        )
        return SplitPlan(train_set, test_set, False, policy)
    train_keys, test_keys = set(train_ids), set(test_ids)
    if train_keys == test_keys:
        if test_fraction is None:
            raise ValueError(
                f"{name}: the train split {train_set.split!r} and the evaluated split {test_set.split!r} are the "
                f"same {len(test_keys)} images{_where(test_set)} (the dataset has no separate {train_set.split!r} "
                "split); give a dataset with distinct splits (e.g. ROOT/train and ROOT/test), or allow a carved split"
            )
        train_rows, test_rows = carve_rows(test_set.labels, test_fraction, seed)
        if not train_rows or not test_rows:
            raise ValueError(f"{name}: {len(test_set)} images are too few to carve a train and a test split")
        tag = f"carved{test_fraction}-seed{seed}"
        train = RowsView(test_set, train_rows, f"{test_set.fingerprint}:{tag}:train", f"{train_set.split} (carved)")
        test = RowsView(test_set, test_rows, f"{test_set.fingerprint}:{tag}:test", f"{test_set.split} (carved)")
        policy = (
            f"carved: the dataset has no separate {train_set.split!r} split ({train_set.split!r} and "
            f"{test_set.split!r} are the same {len(test_set)} images{_where(test_set)}), so a seeded stratified "
            f"split was carved (seed {seed}, {test_fraction:.0%} of each class tested): train {len(train)} images, "
            f"test {len(test)} images, disjoint"
        )
        return SplitPlan(train, test, True, policy)
    shared = train_keys & test_keys
    if shared:
        example = min(shared)
        raise ValueError(
            f"{name}: the train split {train_set.split!r} and the evaluated split {test_set.split!r} share "
            f"{len(shared)} of {len(test_keys)} images (e.g. {example}); a classifier trained on test images "
            "reports an inflated accuracy: make the splits disjoint"
        )
    policy = (
        f"train: split {train_set.split!r} ({len(train_set)} images{_where(train_set)}); test: split "
        f"{test_set.split!r} ({len(test_set)} images{_where(test_set)}); disjoint"
    )
    return SplitPlan(train_set, test_set, False, policy)
