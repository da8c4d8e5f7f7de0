"""What the trained adapters share: the Dassl/CoOp learning-rate schedule, shuffled mini-batches of cached
features, and the checks of their numeric hyper-parameters.

One copy, so that CLIP-Adapter, CLAP, CoOp, CoCoOp and ProLIP cannot drift apart in how an epoch's learning
rate is set or how a bad keyword is reported.
"""

from __future__ import annotations

import math

import torch


def warmup_cosine_lr(base_lr: float, epoch: int, epochs: int, warmup_epochs: int, warmup_lr: float) -> float:
    """Dassl's schedule (CoOp, CoCoOp, CLIP-Adapter, CLAP): a constant `warmup_lr` for the first `warmup_epochs`,
    then cosine from `base_lr` to 0 over `epochs` (the cosine counts from epoch 0, as Dassl's scheduler does)."""
    if epoch < warmup_epochs:
        return warmup_lr
    return 0.5 * base_lr * (1.0 + math.cos(math.pi * epoch / epochs))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every parameter group's learning rate (the schedule is applied per epoch)."""
    for group in optimizer.param_groups:
        group["lr"] = lr


def shuffled_batches(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """A shuffled epoch of index batches (the last one may be short), as a DataLoader with shuffle=True."""
    return list(torch.randperm(n, generator=generator).split(batch_size))


def check_positive(name: str, value: float, allow_zero: bool = False, method: str = "") -> None:
    """ValueError unless `value` is a finite number > 0 (>= 0 with `allow_zero`); `method` prefixes the message."""
    ok = value >= 0 if allow_zero else value > 0
    if not (ok and math.isfinite(value)):
        kind = "non-negative" if allow_zero else "positive"
        raise ValueError(f"{method + ': ' if method else ''}{name} must be a {kind} finite number, got {value}")


def check_count(name: str, value: int, minimum: int, method: str = "") -> None:
    """ValueError unless `value` is an int (not a bool) >= `minimum`; `method` prefixes the message."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{method + ': ' if method else ''}{name} must be an integer >= {minimum}, got {value!r}")
