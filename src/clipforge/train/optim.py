"""AdamW with CLIP's weight-decay exclusions, and the warm-up + cosine learning-rate schedule.

No weight decay on gains, biases, embeddings and the temperature (Radford et al. 2021, App. F;
open_clip's `exclude` rule): decaying a LayerNorm gain or the logit scale towards zero only hurts.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import OptimConfig, ScheduleConfig


def is_no_decay(name: str, param: torch.Tensor) -> bool:
    """Gains and biases (1-d), LayerNorm/BatchNorm parameters, embeddings, the temperature and bias."""
    parts = name.split(".")
    return (
        param.ndim < 2
        or any(part.startswith(("ln", "bn")) for part in parts)
        or "embedding" in name
        or parts[-1] in ("bias", "logit_scale", "logit_bias")
    )


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Trainable parameters in two AdamW groups: with weight decay, and without (gains, biases, embeddings)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if is_no_decay(name, param) else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters (fused when possible); an error when both towers are locked."""
    groups = parameter_groups(model, cfg.weight_decay)
    if not any(g["params"] for g in groups):
        raise ValueError("no trainable parameters: both towers are locked")
    params = [p for g in groups for p in g["params"]]
    # The fused kernel (one pass over all tensors) is several times faster than the per-tensor loop,
    # notably on CPU where torch does not pick it by default; it needs float tensors on one device type.
    fused = all(p.is_floating_point() for p in params) and len({p.device.type for p in params}) == 1
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, fused=fused)


def lr_factor(step: int, total_steps: int, cfg: ScheduleConfig) -> float:
    """Multiplier of the peak lr at optimizer step `step` (0-based)."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.kind == "constant":
        return 1.0
    decay_steps = max(1, total_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / decay_steps)
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * cosine


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, cfg: ScheduleConfig):
    """Per-step learning-rate schedule: warm-up, then cosine or constant, as configured."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total_steps, cfg))
