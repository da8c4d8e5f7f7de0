"""Float comparisons whose tolerance scales with the tensor, so they hold on every CPU.

Two float32 code paths that sum the same terms in a different order (micro-batches vs one batch, a
checkpointed vs a plain backward, oneDNN's AMX kernels on Intel vs AVX2 on AMD, two libraries) agree
to a few ulps *of the largest term*, not of each element: an element that is a difference of large
terms (a gradient entry near zero, a feature component near zero) carries the absolute rounding error
of its neighbours. A fixed `atol=1e-6` is then only right for one tensor scale and one summation
order; the same test fails on another machine or after a harmless change of initialisation.

`assert_close_rel` therefore states the bar as a fraction of the expected tensor's scale:
`max |actual - expected| <= rel * max |expected|`. float32 has eps ~1.2e-7, so `rel=1e-5` allows
~80 ulps of the scale: enough for reordered sums over thousands of terms, while a real bug (a term
counted twice, a wrong mask, a missing normalisation) changes results by a large fraction of the
scale and still fails. On failure it reports the max difference, where it is, and the scale.

Measuring margins: with CLIPFORGE_TOLERANCE_LOG=/some/file set, every call appends a line
`<diff/scale> <rel> <what>` there, so the headroom of each bar can be read off one test run.
"""

from __future__ import annotations

import os

import torch


def max_rel_diff(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected| (0 when both are all zero, inf when only `expected` is)."""
    diff = (actual.detach().double() - expected.detach().double()).abs().max().item() if actual.numel() else 0.0
    scale = expected.detach().double().abs().max().item() if expected.numel() else 0.0
    if scale == 0.0:
        return 0.0 if diff == 0.0 else float("inf")
    return diff / scale


def assert_close_rel(
    actual: torch.Tensor, expected: torch.Tensor, rel: float, what: str = "tensor", scale: float | None = None
) -> None:
    """Assert max |actual - expected| <= rel * max |expected|; shapes and dtypes must match.

    `rel` is a fraction of the expected tensor's largest magnitude (its scale), not a per-element
    relative tolerance. An all-zero `expected` demands an all-zero `actual`. `what` names the
    quantity in the failure message (e.g. the parameter whose gradient is compared). `scale`
    replaces max |expected| for a quantity that is exactly zero in exact arithmetic (e.g. the
    gradient of a bias that a softmax ignores): both sides are then rounding noise of terms of that
    size, and their own magnitude is no yardstick.
    """
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != expected {tuple(expected.shape)}"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != expected {expected.dtype}"
    if expected.numel() == 0:
        return
    a, e = actual.detach().double().cpu(), expected.detach().double().cpu()
    assert torch.isfinite(a).all() and torch.isfinite(e).all(), f"{what}: non-finite values (actual or expected)"
    diff = (a - e).abs()
    scale = e.abs().max().item() if scale is None else scale
    bound = rel * scale
    worst = diff.max().item()
    log = os.environ.get("CLIPFORGE_TOLERANCE_LOG")
    if log:
        with open(log, "a") as handle:
            handle.write(f"{worst / scale if scale else float(worst > 0):.3e} {rel:g} {what}\n")
    if worst > bound:
        index = tuple(int(i) for i in torch.unravel_index(diff.argmax(), diff.shape))
        raise AssertionError(
            f"{what}: max abs diff {worst:.3e} at {index} (actual {a[index].item():.6e}, expected "
            f"{e[index].item():.6e}) exceeds {rel:g} x scale {scale:.3e} = {bound:.3e} "
            f"(diff / scale = {worst / scale if scale else float('inf'):.3e})"
        )
