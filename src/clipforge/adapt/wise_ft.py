"""WiSE-FT: weight-space ensembling of a zero-shot and a fine-tuned CLIP (Wortsman et al. 2022).

"Robust fine-tuning of zero-shot models" shows that fine-tuning end to end raises in-distribution
accuracy but can lose the zero-shot model's robustness to distribution shift, and that linearly
interpolating the two models' weights, `theta_alpha = (1 - alpha) theta_0 + alpha theta_1`, recovers
most of it while keeping most of the fine-tuning gain. The mixing coefficient is chosen by sweeping
alpha and reading in- and out-of-distribution accuracy side by side: `wise_ft_sweep`.

The interpolation is computed as `(1 - alpha) * theta_0 + alpha * theta_1` (not
`theta_0 + alpha * (theta_1 - theta_0)`, which in floating point does not return `theta_1` at alpha = 1),
so alpha 0 and alpha 1 give the two endpoints bit for bit; low-precision weights (bf16/fp16) are mixed in
float32 and rounded once.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from clipforge.models import CLIP

# BatchNorm's count of training batches: an integer buffer that fine-tuning changes but that does not enter
# the forward pass when the layer has a momentum (every CLIP ResNet's); it is interpolated and rounded.
_STEP_COUNTERS = ("num_batches_tracked",)


def _check_alpha(alpha: float) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
        raise ValueError(f"WiSE-FT alpha must be a finite number in [0, 1]; got {alpha!r}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(
            f"WiSE-FT alpha must lie in [0, 1] (0 = the zero-shot model, 1 = the fine-tuned model); got {alpha}"
        )
    return float(alpha)


def _matched_states(zero_shot: nn.Module, fine_tuned: nn.Module) -> tuple[dict, dict]:
    """Both models' state dicts, after checking that they describe the same architecture key by key."""
    if type(zero_shot) is not type(fine_tuned):
        raise ValueError(
            f"WiSE-FT needs two models of the same class; got {type(zero_shot).__name__} (zero-shot) and "
            f"{type(fine_tuned).__name__} (fine-tuned)"
        )
    state0, state1 = zero_shot.state_dict(), fine_tuned.state_dict()
    keys0, keys1 = list(state0), list(state1)
    if keys0 != keys1:
        only0 = [k for k in keys0 if k not in state1]
        only1 = [k for k in keys1 if k not in state0]
        missing = object()
        index = next(i for i in range(max(len(keys0), len(keys1))) if keys0[i : i + 1] != keys1[i : i + 1])
        key0 = keys0[index] if index < len(keys0) else missing
        key1 = keys1[index] if index < len(keys1) else missing
        name0 = "nothing" if key0 is missing else repr(key0)
        name1 = "nothing" if key1 is missing else repr(key1)
        raise ValueError(
            f"WiSE-FT needs models of the same architecture: their parameters differ, first at position {index}: "
            f"{name0} in the zero-shot model, {name1} in the fine-tuned model ({len(only0)} keys only in the "
            f"zero-shot model, {len(only1)} only in the fine-tuned one); fine-tune a copy of the zero-shot model"
        )
    for key in keys0:
        a, b = state0[key], state1[key]
        if a.shape != b.shape or a.dtype != b.dtype:
            raise ValueError(
                f"WiSE-FT needs models of the same architecture: {key!r} is {a.dtype} {tuple(a.shape)} in the "
                f"zero-shot model but {b.dtype} {tuple(b.shape)} in the fine-tuned model"
            )
        if not a.is_floating_point() and key.rsplit(".", 1)[-1] not in _STEP_COUNTERS:
            if not torch.equal(a, b.to(a.device)):
                raise ValueError(
                    f"WiSE-FT cannot interpolate the non-float tensor {key!r} ({a.dtype}), and it differs between "
                    "the zero-shot and fine-tuned models; they are not two versions of one model"
                )
    return state0, state1


def _mix(a: torch.Tensor, b: torch.Tensor, alpha: float) -> torch.Tensor:
    """(1 - alpha) a + alpha b, computed in at least float32 and cast back to a's dtype; exact at alpha 0 and 1."""
    b = b.to(a.device)
    if a.is_floating_point():
        work = torch.promote_types(a.dtype, torch.float32)
        return ((1.0 - alpha) * a.to(work) + alpha * b.to(work)).to(a.dtype)
    if torch.equal(a, b):
        return a.clone()
    return torch.round((1.0 - alpha) * a.double() + alpha * b.double()).to(a.dtype)  # a step counter


def _interpolate(model0: CLIP, state0: dict, state1: dict, alpha: float) -> CLIP:
    model = copy.deepcopy(model0)
    with torch.no_grad():
        mixed = {key: _mix(state0[key], state1[key], alpha) for key in state0}
    model.load_state_dict(mixed, strict=True)
    return model


def wise_ft(zero_shot_model: CLIP, fine_tuned_model: CLIP, alpha: float) -> CLIP:
    """A new model whose every float parameter and buffer is `(1 - alpha) * zero-shot + alpha * fine-tuned`.

    alpha = 0 gives the zero-shot weights and alpha = 1 the fine-tuned weights exactly; the paper's default
    mixing is alpha = 0.5. The two models must share one architecture (same keys, shapes and dtypes; the first
    difference is named otherwise), and integer tensors must agree, except BatchNorm's batch counters, which
    are interpolated and rounded. The result is a deep copy of the zero-shot model (its config, device, train
    or eval mode and requires_grad flags) carrying the mixed weights; neither input is modified.
    """
    alpha = _check_alpha(alpha)
    state0, state1 = _matched_states(zero_shot_model, fine_tuned_model)
    return _interpolate(zero_shot_model, state0, state1, alpha)


def wise_ft_sweep(
    zero_shot_model: CLIP,
    fine_tuned_model: CLIP,
    alphas: Iterable[float],
    evaluate: Callable[[CLIP], Mapping[str, Any]],
) -> list[dict[str, Any]]:
    """Evaluate the WiSE-FT model at each alpha: `[{"alpha": a, **evaluate(wise_ft(..., a))}, ...]` in order.

    `evaluate` receives each interpolated model (one at a time, freed before the next) and returns its
    metrics, e.g. `{"id_accuracy": ..., "ood_accuracy": ...}`, so the trade-off the paper plots (Figure 1)
    can be read off and an alpha chosen on held-out data. The architectures are checked once, up front.
    """
    alphas = [_check_alpha(a) for a in alphas]
    if not alphas:
        raise ValueError("wise_ft_sweep needs at least one alpha, e.g. [0.0, 0.25, 0.5, 0.75, 1.0]")
    state0, state1 = _matched_states(zero_shot_model, fine_tuned_model)
    rows: list[dict[str, Any]] = []
    for alpha in alphas:
        model = _interpolate(zero_shot_model, state0, state1, alpha)
        metrics = evaluate(model)
        del model
        if not isinstance(metrics, Mapping):
            raise TypeError(f"evaluate must return a mapping of metric names to values; got {type(metrics).__name__}")
        if "alpha" in metrics:
            raise ValueError("evaluate's metrics may not contain the key 'alpha': the sweep reports alpha itself")
        rows.append({"alpha": alpha, **metrics})
    return rows
