"""The honest few-shot protocol: k-shot sampling as Dassl/CoOp do it, validation carved from the training split,
test data read only to score a fitted adapter, and base-to-new generalisation as CoCoOp reports it.

For each k (1, 2, 4, 8, 16) and seed (1, 2, 3), each class's training rows are shuffled by a generator seeded
with `seed`: the first k are the support set (all of them when the class has fewer: the class is reported in
`short_classes`), the next `min(k, 4)` are the k-shot validation set, disjoint from the support set. A method
chooses its hyper-parameters on that validation set only (its own grid) or by its validation-free rule; the
test set is never passed to `fit` and is read once the adapter exists, to score it. Every record carries the
chosen hyper-parameters (`adapter.hparams`) so a run can be repeated exactly.

Base-to-new (Zhou et al. 2022, CoCoOp): the first half of the classes (rounded up) are "base": methods train on
base-class support rows only and are tested on the base classes' test rows; "new" classes never contribute an
image, so only a method whose classifier can score a class from its text weights alone is tested on them: those
listed in `BASE_TO_NEW` (zero-shot; CLIP-Adapter, whose learned image-side residual applies unchanged to new
text weights; CoOp, whose learned context prompts any class name; CoCoOp, whose learned context and meta-net
do the same per image, as its paper evaluates both).
Records report base, new and their harmonic mean.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .base import Adapter, FitContext, LabelledFeatures, hparam_defaults

SHOTS = (1, 2, 4, 8, 16)
SEEDS = (1, 2, 3)
MAX_VAL_PER_CLASS = 4  # CoOp's k-shot validation set: min(k, 4) images per class


@dataclass(frozen=True)
class ShotSplit:
    """One (k, seed) draw: support-set rows `train` and validation rows `val` (indices into the training pool,
    sorted, disjoint), and {class: rows available} for the classes with fewer than k rows."""

    train: torch.Tensor  # (<= k * C,) long
    val: torch.Tensor  # (<= min(k, 4) * C,) long
    short_classes: dict[int, int]


def sample_shots(labels: torch.Tensor, num_classes: int, k: int, seed: int) -> ShotSplit:
    """k support rows and min(k, 4) validation rows per class, without replacement, seeded; labels (N,)."""
    if k < 1:
        raise ValueError(f"shots per class must be positive, got k={k}")
    labels = labels.long().cpu()
    generator = torch.Generator().manual_seed(int(seed))
    n_val = min(k, MAX_VAL_PER_CLASS)
    train, val, short = [], [], {}
    for c in range(num_classes):
        rows = torch.nonzero(labels == c).flatten()
        if rows.numel() < k:
            short[c] = int(rows.numel())
        order = rows[torch.randperm(rows.numel(), generator=generator)]
        train.append(order[:k])
        val.append(order[k : k + n_val])
    return ShotSplit(torch.cat(train).sort().values, torch.cat(val).sort().values, short)


def _rows_of(tensor: torch.Tensor | None, index: torch.Tensor) -> torch.Tensor | None:
    """Rows `index` of an (N, ...) tensor or of each view of a (V, N, ...) one (views, pre_features)."""
    if tensor is None:
        return None
    return tensor[:, index] if tensor.ndim == 3 else tensor[index]


def take(data: LabelledFeatures, rows: torch.Tensor) -> LabelledFeatures:
    """The rows `rows` of `data` (features, labels, views and pre-projection features alike), same class names."""
    index = rows.long().cpu()
    return LabelledFeatures(
        data.features[index],
        data.labels[index],
        data.classnames,
        _rows_of(data.views, index),
        _rows_of(data.pre_features, index),
    )


def restrict_classes(data: LabelledFeatures, classes: Sequence[int]) -> LabelledFeatures:
    """The rows of `data` whose class is in `classes`, relabelled 0..len(classes)-1 in that order."""
    mapping = torch.full((data.num_classes,), -1, dtype=torch.long)
    mapping[torch.as_tensor(list(classes), dtype=torch.long)] = torch.arange(len(classes))
    new_labels = mapping[data.labels.long().cpu()]
    rows = torch.nonzero(new_labels >= 0).flatten()
    names = tuple(data.classnames[c] for c in classes)
    return LabelledFeatures(
        data.features[rows], new_labels[rows], names, _rows_of(data.views, rows), _rows_of(data.pre_features, rows)
    )


def _fit(method: str, ctx: FitContext, train: LabelledFeatures, val: LabelledFeatures | None, **hparams) -> Adapter:
    from . import fit

    return fit(method, ctx, train, val, **hparams)


def _hparams_for(method: str, seed: int, overrides: Mapping[str, Mapping[str, Any]] | None) -> dict[str, Any]:
    """The user's hyper-parameters for `method`, plus the protocol seed for methods that draw random numbers."""
    chosen = dict((overrides or {}).get(method, {}))
    if "seed" in hparam_defaults(method):
        chosen.setdefault("seed", int(seed))
    return chosen


# Methods whose adapter scores pre-projection features (`encode_image(x, project=False)`), not projected ones.
PRE_PROJECTION_METHODS = frozenset({"prolip"})


def accuracy(adapter: Adapter, test: LabelledFeatures) -> float:
    """Top-1 accuracy of `adapter` on `test` (the only place the protocol reads test features)."""
    inputs = test.features  # (N, D)
    if adapter.method in PRE_PROJECTION_METHODS:
        if test.pre_features is None or test.pre_features.ndim != 2:
            raise ValueError(
                f"{adapter.method} scores pre-projection features: give the test set pre_features (N, P) "
                "(clipforge.adapt.weight_space.labelled_features computes them)"
            )
        inputs = test.pre_features  # (N, P)
    predictions = adapter.predict(inputs)  # (N,); a wrong feature width fails in check_features
    return float((predictions.cpu() == test.labels.cpu()).float().mean())


def _json_hparams(hparams: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in hparams.items()}


def run_protocol(
    ctx: FitContext,
    train_pool: LabelledFeatures,
    test: LabelledFeatures,
    methods: Sequence[str],
    shots: Sequence[int] = SHOTS,
    seeds: Sequence[int] = SEEDS,
    *,
    hparams: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """One record per (method, k, seed): {"method", "shots", "seed", "accuracy", "fit_seconds", "hparams",
    "train_size", "val_size", "short_classes"}.

    ctx: the FitContext of all classes (text weights (D, C)); train_pool: the training split the k-shot support
    and validation sets are drawn from; test: scored only after each fit. hparams: {method: {name: value}}
    overrides of the papers' defaults (the protocol seed is passed to methods with a `seed`)."""
    if test.classnames != train_pool.classnames:
        raise ValueError(
            "run_protocol: the test set's class names must equal the training pool's "
            f"({len(test.classnames)} vs {len(train_pool.classnames)} classes)"
        )
    if not methods or not shots or not seeds:
        raise ValueError("run_protocol needs at least one method, one k and one seed")
    records = []
    for k in shots:
        for seed in seeds:
            split = sample_shots(train_pool.labels, train_pool.num_classes, k, seed)
            support = take(train_pool, split.train)
            val = take(train_pool, split.val) if split.val.numel() else None
            for method in methods:
                chosen = _hparams_for(method, seed, hparams)
                start = time.perf_counter()
                adapter = _fit(method, ctx, support, val, **chosen)
                seconds = time.perf_counter() - start
                with torch.no_grad():
                    score = accuracy(adapter, test)
                records.append(
                    {
                        "method": method,
                        "shots": int(k),
                        "seed": int(seed),
                        "accuracy": score,
                        "fit_seconds": seconds,
                        "hparams": _json_hparams(adapter.hparams),
                        "train_size": len(support),
                        "val_size": 0 if val is None else len(val),
                        "short_classes": {str(c): n for c, n in split.short_classes.items()},
                    }
                )
    return records


def aggregate(records: Sequence[Mapping[str, Any]], key: str = "accuracy") -> list[dict[str, Any]]:
    """Mean and population std of `key` (and mean fit time) over seeds, per (method, shots), in first-seen order:
    [{"method", "shots", "mean", "std", "runs", "fit_seconds"}]."""
    groups: dict[tuple[str, int], list[Mapping[str, Any]]] = {}
    for record in records:
        groups.setdefault((record["method"], record["shots"]), []).append(record)
    out = []
    for (method, k), rows in groups.items():
        values = torch.tensor([float(r[key]) for r in rows], dtype=torch.float64)
        out.append(
            {
                "method": method,
                "shots": k,
                "mean": values.mean().item(),
                "std": values.std(unbiased=False).item(),
                "runs": values.tolist(),
                "fit_seconds": sum(float(r["fit_seconds"]) for r in rows) / len(rows),
            }
        )
    return out


# --- base-to-new -------------------------------------------------------------------------------------------------


def _retarget_zeroshot(adapter: Adapter, classnames: tuple[str, ...], text_weights: torch.Tensor) -> Adapter:
    from .training_free import ZeroShotAdapter

    return ZeroShotAdapter(classnames, adapter.hparams, text_weights)


def _retarget_clip_adapter(adapter: Adapter, classnames: tuple[str, ...], text_weights: torch.Tensor) -> Adapter:
    from .feature_trained import ClipAdapter

    return ClipAdapter(classnames, adapter.hparams, down=adapter.down, up=adapter.up, text_weights=text_weights)


def _retarget_cocoop(adapter: Adapter, classnames: tuple[str, ...], text_weights: torch.Tensor) -> Adapter:
    return adapter.for_classes(classnames)  # the learned context + meta-net prompt any class name


def _retarget_coop(adapter: Adapter, classnames: tuple[str, ...], text_weights: torch.Tensor) -> Adapter:
    return adapter.for_classes(classnames)  # the learned context prompts any class name (not the zero-shot head)


# Methods whose fitted classifier scores a class from its text weights alone, so it can be tested on classes it
# never saw: method -> function(adapter fitted on base, new class names, new text weights (D, C_new)) -> Adapter.
BASE_TO_NEW: dict[str, Callable[[Adapter, tuple[str, ...], torch.Tensor], Adapter]] = {
    "zeroshot": _retarget_zeroshot,
    "clip_adapter": _retarget_clip_adapter,
    "cocoop": _retarget_cocoop,
    "coop": _retarget_coop,
}


def base_new_classes(num_classes: int) -> tuple[list[int], list[int]]:
    """CoCoOp's split: the first ceil(C / 2) classes are base, the rest new (C >= 2)."""
    if num_classes < 2:
        raise ValueError(f"base-to-new needs at least 2 classes, got {num_classes}")
    half = math.ceil(num_classes / 2)
    return list(range(half)), list(range(half, num_classes))


def run_base_to_new(
    ctx: FitContext,
    train_pool: LabelledFeatures,
    test: LabelledFeatures,
    methods: Sequence[str],
    shots: Sequence[int] = (16,),
    seeds: Sequence[int] = SEEDS,
    *,
    hparams: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """One record per (method, k, seed) of the methods in BASE_TO_NEW: {"method", "shots", "seed", "base", "new",
    "harmonic", "fit_seconds", "hparams"}; training sees base classes only. Unsupported methods: ValueError."""
    unsupported = [m for m in methods if m not in BASE_TO_NEW]
    if unsupported:
        raise ValueError(
            f"base-to-new cannot score unseen classes with {unsupported}; supported: {sorted(BASE_TO_NEW)}"
        )
    if test.classnames != train_pool.classnames:
        raise ValueError("run_base_to_new: the test set's class names must equal the training pool's")
    base, new = base_new_classes(train_pool.num_classes)
    weights = ctx.text_weights
    means = None if ctx.prompt_means is None else ctx.prompt_means[:, base]
    base_ctx = FitContext(weights[:, base], ctx.logit_scale, ctx.model, ctx.device, ctx.dtype, prompt_means=means)
    pool = restrict_classes(train_pool, base)
    new_names = tuple(train_pool.classnames[c] for c in new)
    records = []
    for k in shots:
        for seed in seeds:
            split = sample_shots(pool.labels, pool.num_classes, k, seed)
            support = take(pool, split.train)
            val = take(pool, split.val) if split.val.numel() else None
            for method in methods:
                start = time.perf_counter()
                adapter = _fit(method, base_ctx, support, val, **_hparams_for(method, seed, hparams))
                seconds = time.perf_counter() - start
                on_new = BASE_TO_NEW[method](adapter, new_names, weights[:, new])
                with torch.no_grad():
                    base_acc = accuracy(adapter, restrict_classes(test, base))
                    new_acc = accuracy(on_new, restrict_classes(test, new))
                harmonic = 2 * base_acc * new_acc / (base_acc + new_acc) if base_acc + new_acc > 0 else 0.0
                records.append(
                    {
                        "method": method,
                        "shots": int(k),
                        "seed": int(seed),
                        "base": base_acc,
                        "new": new_acc,
                        "harmonic": harmonic,
                        "fit_seconds": seconds,
                        "hparams": _json_hparams(adapter.hparams),
                    }
                )
    return records


__all__ = [
    "BASE_TO_NEW",
    "MAX_VAL_PER_CLASS",
    "PRE_PROJECTION_METHODS",
    "SEEDS",
    "SHOTS",
    "ShotSplit",
    "accuracy",
    "aggregate",
    "base_new_classes",
    "restrict_classes",
    "run_base_to_new",
    "run_protocol",
    "sample_shots",
    "take",
]
