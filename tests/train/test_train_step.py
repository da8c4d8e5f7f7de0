"""Gradient accumulation with the feature cache equals one large-batch step (train/step.py)."""

import contextlib

import pytest
import torch

import clipforge
from clipforge.train.config import LossConfig
from clipforge.train.step import run_step
from support.tolerance import assert_close_rel


def _batch(model, n, seed):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, model.image_size, model.image_size, generator=g)
    tokens = torch.zeros(n, model.context_length, dtype=torch.long)
    for row in range(n):
        k = 2 + row % 5
        tokens[row, 0] = 49406
        tokens[row, 1 : k + 1] = torch.randint(1, 49000, (k,), generator=g)
        tokens[row, k + 1] = 49407
    return images, tokens


def _grads(model, micro, loss_cfg):
    model.zero_grad(set_to_none=True)
    result = run_step(model, micro, loss_cfg, None, contextlib.nullcontext)
    return result.loss, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name,kind", [("tiny-vit", "clip"), ("tiny-siglip", "siglip")])
@pytest.mark.parametrize("accum", [2, 4])
def test_accumulated_step_equals_large_batch_step(name, kind, accum):
    torch.manual_seed(0)
    model = clipforge.create_model(name).train()
    images, tokens = _batch(model, 8, seed=1)
    loss_cfg = LossConfig(kind=kind)
    full_loss, full = _grads(model, [(images, tokens)], loss_cfg)
    size = 8 // accum
    micro = [(images[i : i + size], tokens[i : i + size]) for i in range(0, 8, size)]
    acc_loss, acc = _grads(model, micro, loss_cfg)
    assert acc_loss == pytest.approx(full_loss, rel=1e-5)
    assert set(acc) == set(full)
    for key in full:  # reordered fp32 sums: measured <= 1.4e-6 of each gradient's scale (Intel AMX)
        assert_close_rel(acc[key], full[key], rel=1e-5, what=f"grad {key} (accum {accum})")
    assert full["logit_scale"].abs() > 0  # the temperature's gradient is counted once, not accum times


def test_non_finite_loss_is_reported_not_backpropagated():
    torch.manual_seed(0)
    model = clipforge.create_model("tiny-vit").train()
    images, tokens = _batch(model, 4, seed=2)
    images[0, 0, 0, 0] = float("nan")
    model.zero_grad(set_to_none=True)
    result = run_step(model, [(images, tokens)], LossConfig(), None, contextlib.nullcontext)
    assert not result.finite
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.slow
def test_torch_compile_option_matches_eager():
    """model.compile=True wraps the model with torch.compile; its step equals the eager step (~45 s to compile)."""
    torch.manual_seed(0)
    model = clipforge.create_model("tiny-vit").train()
    images, tokens = _batch(model, 4, seed=3)
    eager_loss, eager = _grads(model, [(images, tokens)], LossConfig())
    compiled = torch.compile(model)
    model.zero_grad(set_to_none=True)
    result = run_step(compiled, [(images, tokens)], LossConfig(), None, contextlib.nullcontext)
    assert result.loss == pytest.approx(eager_loss, rel=1e-5)
    for name, param in model.named_parameters():  # inductor fuses and reorders sums
        assert_close_rel(param.grad, eager[name], rel=1e-4, what=f"grad {name} (compiled vs eager)")
