"""k-shot classification on frozen features, repeated over seeds (the CoOp / Tip-Adapter protocol).

For each k and seed, exactly k training rows per class are drawn (seeded); a class with fewer than k
rows contributes all of them and is reported in the result's "short_classes". The k-shot set is
scored on the full test features by one of two methods:

- "prototype": nearest class mean by cosine: the mean of each class's L2-normalised features,
  renormalised (the image-side analogue of zero-shot class weights; Snell et al. 2017 prototypes).
- "linear_probe": `clipforge.eval.probe.linear_probe`, its l2 chosen on a validation split of the
  k-shot set only. When no class has two shots (k = 1) no split is possible and the fixed
  `one_shot_l2` is used instead (default 0.1 on the probe's mean-loss scale: a strong prior that keeps
  the 1-shot classifier close to the standardised class-mean direction).

Each k reports top-1 over seeds as {"mean", "std", "runs", "short_classes"}; std is the population
standard deviation (0 for a single seed).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .metrics import topk_accuracy
from .probe import linear_probe

# Logit given to a class with no training rows: below any cosine, so such a class is never predicted.
_ABSENT_CLASS_LOGIT = -3.0


def sample_k_shot(labels: torch.Tensor, num_classes: int, k: int, seed: int) -> tuple[torch.Tensor, dict[int, int]]:
    """Sorted indices of k rows per class (all rows of a smaller class), and {class: rows available} for
    the classes that had fewer than k. labels (N,) -> indices (<= k * C,) long."""
    if k < 1:
        raise ValueError(f"k must be positive, got {k}")
    labels = labels.long().cpu()
    generator = torch.Generator().manual_seed(seed)
    chosen, short = [], {}
    for c in range(num_classes):
        rows = torch.nonzero(labels == c).flatten()
        if rows.numel() < k:
            short[c] = rows.numel()
        chosen.append(rows[torch.randperm(rows.numel(), generator=generator)[:k]])
    return torch.cat(chosen).sort().values, short


def prototype_logits(
    train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor, num_classes: int
) -> torch.Tensor:
    """Cosine similarity (M, C) of each test row to each class's renormalised mean of unit-norm features."""
    x = F.normalize(train_features.float(), dim=-1)  # (N, D)
    labels = train_labels.to(x.device).long()
    sums = torch.zeros(num_classes, x.shape[1], device=x.device).index_add_(0, labels, x)  # (C, D)
    present = torch.bincount(labels, minlength=num_classes) > 0  # (C,)
    prototypes = F.normalize(sums, dim=-1)  # (C, D); the mean's direction is the sum's
    logits = F.normalize(test_features.to(x.device).float(), dim=-1) @ prototypes.T  # (M, C)
    return logits.masked_fill(~present, _ABSENT_CLASS_LOGIT)


def few_shot(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    ks: Sequence[int] = (1, 2, 4, 8, 16),
    seeds: Sequence[int] = (0, 1, 2),
    method: str = "prototype",
    *,
    one_shot_l2: float = 0.1,
    max_iter: int = 1000,
) -> dict[int, dict]:
    """Top-1 of k-shot classifiers: {k: {"mean", "std", "runs": [per seed], "short_classes": {c: n}}}.

    train_features (N, D), train_labels (N,), test_features (M, D), test_labels (M,).
    """
    if method not in ("prototype", "linear_probe"):
        raise ValueError(f"method must be 'prototype' or 'linear_probe', got {method!r}")
    if train_features.dim() != 2 or test_features.dim() != 2 or train_features.shape[1] != test_features.shape[1]:
        raise ValueError(
            f"features must be (N, D) and (M, D), got {tuple(train_features.shape)} and {tuple(test_features.shape)}"
        )
    if train_labels.shape != (train_features.shape[0],) or test_labels.shape != (test_features.shape[0],):
        raise ValueError("labels must be 1-D with one entry per feature row")
    if not seeds:
        raise ValueError("few_shot needs at least one seed")

    out: dict[int, dict] = {}
    for k in ks:
        runs, short = [], {}
        for seed in seeds:
            index, short = sample_k_shot(train_labels, num_classes, k, seed)
            x = train_features[index.to(train_features.device)]
            y = train_labels[index.to(train_labels.device)]
            if method == "prototype":
                logits = prototype_logits(x, y, test_features, num_classes)
                runs.append(topk_accuracy(logits, test_labels.to(logits.device), ks=(1,))["top1"])
            else:
                splittable = bool((torch.bincount(y.long().cpu(), minlength=num_classes) >= 2).any())
                result = linear_probe(
                    x,
                    y,
                    test_features,
                    test_labels,
                    num_classes,
                    seed=seed,
                    l2=None if splittable else one_shot_l2,
                    max_iter=max_iter,
                )
                runs.append(result.top1)
        t = torch.tensor(runs, dtype=torch.float64)
        out[k] = {
            "mean": t.mean().item(),
            "std": t.std(unbiased=False).item(),
            "runs": runs,
            "short_classes": short,  # the same for every seed: it depends on the class sizes only
        }
    return out
