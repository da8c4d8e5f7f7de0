"""Single-process tests of clipforge.train.losses: parity with open_clip 3.3.0's loss.py and known answers.

Parity: loss values and the gradients of image/text features, logit_scale and logit_bias against
open_clip's ClipLoss, SigLipLoss and DistillClipLoss on the same random unit features. Tolerance, as
max |ours - theirs| <= rel * max |theirs| per tensor: rel = 1e-12 in float64, 5e-6 in float32 (clipforge
takes logits_per_text as the transpose of logits_per_image, open_clip as a second matmul, so float32
results differ by rounding, measured up to 4.2e-7 on an Intel AMX CPU; other CPUs' kernels sum in other
orders, hence the ~10x headroom, still far below the percent-level change of a real bug). Multi-process
behaviour is in test_distributed.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from clipforge.train.distributed import DistInfo
from clipforge.train.losses import clamp_logit_scale_, clip_loss, distillation_loss, siglip_loss

oc_loss = pytest.importorskip("open_clip.loss")

REL = {torch.float32: 5e-6, torch.float64: 1e-12}
BATCH_SIZES = [1, 2, 7, 64]


def _features(b: int, d: int, dtype: torch.dtype, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    image = F.normalize(torch.randn(b, d, generator=g, dtype=dtype), dim=-1)
    text = F.normalize(torch.randn(b, d, generator=g, dtype=dtype), dim=-1)
    return image, text


def _loss_and_grads(
    fn: Callable[..., torch.Tensor],
    image: torch.Tensor,
    text: torch.Tensor,
    scale: float,
    bias: float | None,
) -> dict[str, torch.Tensor]:
    image, text = image.clone().requires_grad_(), text.clone().requires_grad_()
    s = torch.tensor(scale, dtype=image.dtype, requires_grad=True)
    b = None if bias is None else torch.tensor(bias, dtype=image.dtype, requires_grad=True)
    loss = fn(image, text, s, b)
    loss.backward()
    out = {"loss": loss.detach(), "image": image.grad, "text": text.grad, "logit_scale": s.grad}
    if b is not None:
        out["logit_bias"] = b.grad
    return out


def _assert_rel_close(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor], rel: float) -> None:
    assert ours.keys() == theirs.keys()
    for key in ours:
        diff = (ours[key] - theirs[key]).abs().max().item()
        assert diff <= rel * theirs[key].abs().max().item(), f"{key}: max diff {diff:.2e}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bias", [None, -3.0])
@pytest.mark.parametrize("b", BATCH_SIZES)
def test_clip_loss_matches_open_clip(b: int, bias: float | None, dtype: torch.dtype) -> None:
    image, text = _features(b, 32, dtype, seed=b)
    ours = _loss_and_grads(lambda i, t, s, lb: clip_loss(i, t, s, logit_bias=lb), image, text, 14.3, bias)
    theirs = _loss_and_grads(lambda i, t, s, lb: oc_loss.ClipLoss()(i, t, s, lb), image, text, 14.3, bias)
    if bias is not None:
        # softmax ignores a constant shift: the bias gets no gradient (both sides are rounding noise)
        assert ours.pop("logit_bias").abs().item() < 1e-6
        assert theirs.pop("logit_bias").abs().item() < 1e-6
    _assert_rel_close(ours, theirs, REL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bias", [None, -3.0])
@pytest.mark.parametrize("b", BATCH_SIZES)
def test_siglip_loss_matches_open_clip(b: int, bias: float | None, dtype: torch.dtype) -> None:
    image, text = _features(b, 32, dtype, seed=100 + b)
    ours = _loss_and_grads(lambda i, t, s, lb: siglip_loss(i, t, s, lb), image, text, 10.0, bias)
    theirs = _loss_and_grads(lambda i, t, s, lb: oc_loss.SigLipLoss()(i, t, s, lb), image, text, 10.0, bias)
    _assert_rel_close(ours, theirs, REL[dtype])


@pytest.mark.parametrize("b", BATCH_SIZES)
def test_distillation_matches_open_clip_gradients(b: int) -> None:
    """open_clip's distill term is a soft cross-entropy = our KL + the teacher's entropy (a constant)."""
    image, text = _features(b, 16, torch.float64, seed=200 + b)
    t_image, t_text = _features(b, 16, torch.float64, seed=300 + b)
    t_scale = torch.tensor(20.0, dtype=torch.float64)
    ours = _loss_and_grads(
        lambda i, t, s, _: distillation_loss(i, t, s, t_image, t_text, t_scale), image, text, 9.0, None
    )
    theirs = _loss_and_grads(
        lambda i, t, s, _: oc_loss.DistillClipLoss()(i, t, s, t_image, t_text, t_scale)[1], image, text, 9.0, None
    )
    t_logits = t_scale * t_image @ t_text.T  # (B, B)
    entropy = sum(-(p * p.log()).sum(1).mean() for p in (t_logits.softmax(1), t_logits.T.softmax(1))) / 2
    ours["loss"] = ours["loss"] + entropy
    _assert_rel_close(ours, theirs, REL[torch.float64])


# --- known answers -----------------------------------------------------------------------------------------


def test_aligned_features_with_huge_scale_give_zero_loss() -> None:
    eye = torch.eye(4, 8)  # four orthonormal pairs, each image equal to its caption
    scale = torch.tensor(1e4)
    assert clip_loss(eye, eye, scale).item() < 1e-6
    # sigmoid: positives at +scale/2, negatives at -scale/2
    assert siglip_loss(eye, eye, scale, -scale / 2).item() < 1e-6


def test_identical_features_give_log_batch_size() -> None:
    """Every logit equal: each row is uniform over B candidates, cross-entropy log B."""
    features = F.normalize(torch.ones(5, 3), dim=-1)
    assert clip_loss(features, features, torch.tensor(30.0)).item() == pytest.approx(math.log(5), rel=1e-6)


def _softplus(x: float) -> float:  # -log sigmoid(-x) = log(1 + e^x)
    return math.log1p(math.exp(x))


def test_clip_loss_hand_computed_2x2() -> None:
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    text = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    # logits = 2 * image @ text.T = [[2, 1.2], [0, 1.6]]; row CE = log(1 + e^(other - own))
    image_to_text = (_softplus(1.2 - 2.0) + _softplus(0.0 - 1.6)) / 2
    text_to_image = (_softplus(0.0 - 2.0) + _softplus(1.2 - 1.6)) / 2  # columns of the logits
    expected = (image_to_text + text_to_image) / 2
    assert clip_loss(image, text, torch.tensor(2.0)).item() == pytest.approx(expected, rel=1e-6)
    biased = clip_loss(image, text, torch.tensor(2.0), logit_bias=torch.tensor(-5.0))
    assert biased.item() == pytest.approx(expected, rel=1e-6)  # softmax is shift-invariant


def test_siglip_loss_hand_computed_2x2() -> None:
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    text = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    logits = [[2.0 - 1.0, 1.2 - 1.0], [0.0 - 1.0, 1.6 - 1.0]]  # 2 * image @ text.T - 1
    # -log sigmoid(z * logit) = softplus(-z * logit); z = +1 on the diagonal, -1 elsewhere; / B
    expected = sum(_softplus(-logits[i][j] if i == j else logits[i][j]) for i in range(2) for j in range(2)) / 2
    assert siglip_loss(image, text, torch.tensor(2.0), torch.tensor(-1.0)).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(("local_loss", "gather_with_grad"), [(True, False), (False, True), (True, True)])
def test_clip_options_are_no_ops_in_one_process(local_loss: bool, gather_with_grad: bool) -> None:
    image, text = _features(6, 8, torch.float64, seed=7)
    scale = torch.tensor(5.0, dtype=torch.float64)
    plain = clip_loss(image, text, scale)
    for dist in (None, DistInfo()):
        with_options = clip_loss(image, text, scale, dist, local_loss=local_loss, gather_with_grad=gather_with_grad)
        torch.testing.assert_close(with_options, plain, rtol=1e-12, atol=0)


def test_siglip_directions_agree_in_one_process() -> None:
    image, text = _features(6, 8, torch.float64, seed=8)
    args = (image, text, torch.tensor(10.0, dtype=torch.float64), torch.tensor(-5.0, dtype=torch.float64), DistInfo())
    torch.testing.assert_close(siglip_loss(*args, bidirectional=False), siglip_loss(*args), rtol=1e-12, atol=0)


def test_losses_reject_unpaired_shapes() -> None:
    image, text = _features(4, 8, torch.float32, seed=9)
    with pytest.raises(ValueError, match="same shape"):
        clip_loss(image, text[:3], torch.tensor(1.0))
    with pytest.raises(ValueError, match="same shape"):
        siglip_loss(image, text[:, :4], torch.tensor(1.0), torch.tensor(0.0))


def test_distillation_of_identical_models_is_zero() -> None:
    image, text = _features(5, 8, torch.float32, seed=10)
    scale = torch.tensor(12.0)
    loss = distillation_loss(image, text, scale, image, text, scale, feature_weight=1.0)
    assert abs(loss.item()) < 1e-6


def test_feature_distillation_known_answer_and_dims() -> None:
    t_image, t_text = _features(3, 4, torch.float64, seed=11)
    s_image = t_image + torch.tensor([0.1, 0.0, 0.0, 0.0], dtype=torch.float64)  # ||delta||^2 = 0.01 per row
    scale = torch.tensor(1.0, dtype=torch.float64)
    loss = distillation_loss(s_image, t_text, scale, t_image, t_text, scale, logit_weight=0.0, feature_weight=2.0)
    assert loss.item() == pytest.approx(2.0 * 0.01, rel=1e-10)
    with pytest.raises(ValueError, match="equal dims"):
        distillation_loss(s_image, t_text, scale, t_image[:, :3], t_text[:, :3], scale, feature_weight=1.0)
    # without the feature term, different widths are fine: only similarities are compared
    distillation_loss(s_image, t_text, scale, t_image[:, :3], t_text[:, :3], scale)


def test_distillation_temperature_overrides_both_scales() -> None:
    image, text = _features(4, 8, torch.float64, seed=12)
    t_image, t_text = _features(4, 8, torch.float64, seed=13)
    a = distillation_loss(image, text, torch.tensor(3.0), t_image, t_text, torch.tensor(50.0), temperature=0.1)
    b = distillation_loss(image, text, torch.tensor(10.0), t_image, t_text, torch.tensor(10.0))
    torch.testing.assert_close(a, b, rtol=1e-10, atol=0)


def test_distillation_gives_the_teacher_no_gradient() -> None:
    image, text = _features(4, 8, torch.float32, seed=14)
    t_image, t_text = (x.clone().requires_grad_() for x in _features(4, 8, torch.float32, seed=15))
    t_scale = torch.tensor(10.0, requires_grad=True)
    distillation_loss(image.requires_grad_(), text, torch.tensor(10.0), t_image, t_text, t_scale).backward()
    assert image.grad is not None
    assert t_image.grad is None and t_text.grad is None and t_scale.grad is None


# --- temperature clamp -------------------------------------------------------------------------------------


class _Towers(nn.Module):
    def __init__(self, log_scale: float) -> None:
        super().__init__()
        self.logit_scale = nn.Parameter(torch.tensor(log_scale))


class _Wrapper(nn.Module):  # stands in for DistributedDataParallel's `.module`
    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module


def test_clamp_logit_scale_caps_the_temperature_at_100() -> None:
    model = _Towers(math.log(1000))
    param = clamp_logit_scale_(model)
    assert param is model.logit_scale and param.requires_grad
    assert model.logit_scale.exp().item() == pytest.approx(100.0, rel=1e-6)
    wrapped = _Wrapper(_Towers(-1.0))
    clamp_logit_scale_(wrapped)
    assert wrapped.module.logit_scale.item() == 0.0  # open_clip's lower bound: scale >= 1
    inside = _Towers(math.log(50))
    clamp_logit_scale_(inside.logit_scale)
    assert inside.logit_scale.exp().item() == pytest.approx(50.0, rel=1e-6)  # in range: untouched
    clamp_logit_scale_(inside, max_log=math.log(20))
    assert inside.logit_scale.exp().item() == pytest.approx(20.0, rel=1e-6)
    with pytest.raises(TypeError, match="logit_scale"):
        clamp_logit_scale_(nn.Linear(2, 2))
