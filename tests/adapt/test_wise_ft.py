"""WiSE-FT weight-space interpolation (Wortsman et al. 2022): exact endpoints, the mean at 0.5, refusals."""

import dataclasses
import math

import pytest
import torch
from torch import nn

from clipforge.adapt.wise_ft import wise_ft, wise_ft_sweep
from clipforge.models import CLIP, get_model_config
from support.tolerance import assert_close_rel


def _pair(name: str, dtype: torch.dtype = torch.float32) -> tuple[CLIP, CLIP]:
    """A zero-shot model and a 'fine-tuned' copy: every float tensor moved, BatchNorm counters advanced."""
    torch.manual_seed(0)
    zero_shot = CLIP(get_model_config(name)).to(dtype).eval()
    fine_tuned = CLIP(get_model_config(name)).to(dtype).eval()
    fine_tuned.load_state_dict(zero_shot.state_dict())
    with torch.no_grad():
        for tensor in fine_tuned.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(0.05 * torch.randn_like(tensor) * (tensor.abs().max() + 1))
            else:
                tensor.add_(7)  # num_batches_tracked: fine-tuning in train mode counts its batches
    return zero_shot, fine_tuned


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", ["tiny-vit", "tiny-rn"])
def test_alpha_0_and_1_return_the_endpoints_exactly(name):
    zero_shot, fine_tuned = _pair(name)
    for alpha, expected in ((0.0, zero_shot), (1.0, fine_tuned), (0, zero_shot), (1, fine_tuned)):
        mixed = wise_ft(zero_shot, fine_tuned, alpha)
        assert isinstance(mixed, CLIP) and mixed is not zero_shot and mixed is not fine_tuned
        want = expected.state_dict()
        for key, tensor in mixed.state_dict().items():
            assert tensor.dtype == want[key].dtype and torch.equal(tensor, want[key]), f"alpha={alpha}: {key}"
    images = torch.randn(2, 3, zero_shot.image_size, zero_shot.image_size)
    with torch.no_grad():
        assert torch.equal(wise_ft(zero_shot, fine_tuned, 1.0).encode_image(images), fine_tuned.encode_image(images))


def test_bf16_endpoints_are_exact_and_the_middle_is_rounded_once():
    zero_shot, fine_tuned = _pair("tiny-vit", torch.bfloat16)
    for alpha, expected in ((0.0, zero_shot), (1.0, fine_tuned)):
        want = expected.state_dict()
        for key, tensor in wise_ft(zero_shot, fine_tuned, alpha).state_dict().items():
            assert torch.equal(tensor, want[key]), f"bf16 alpha={alpha}: {key}"
    proj0, proj1 = zero_shot.visual.proj.detach(), fine_tuned.visual.proj.detach()
    expected = ((1 - 0.3) * proj0.float() + 0.3 * proj1.float()).bfloat16()  # float32 mix, one rounding
    assert torch.equal(wise_ft(zero_shot, fine_tuned, 0.3).visual.proj.detach(), expected)


def test_alpha_half_is_the_mean_and_counters_are_rounded():
    zero_shot, fine_tuned = _pair("tiny-rn")
    state0, state1 = zero_shot.state_dict(), fine_tuned.state_dict()
    mixed = wise_ft(zero_shot, fine_tuned, 0.5).state_dict()
    for key, tensor in mixed.items():
        if tensor.is_floating_point():
            assert_close_rel(tensor, (state0[key] + state1[key]) / 2, 1e-6, key)
        else:
            assert key.endswith("num_batches_tracked")
            assert tensor.dtype == torch.long
            assert int(tensor) == round((int(state0[key]) + int(state1[key])) / 2)
    quarter = wise_ft(zero_shot, fine_tuned, 0.25)
    assert_close_rel(
        quarter.logit_scale.detach(), 0.75 * zero_shot.logit_scale.detach() + 0.25 * fine_tuned.logit_scale.detach(),
        1e-6, "logit_scale at 0.25",
    )


def test_inputs_are_not_modified_and_the_result_shares_no_storage():
    zero_shot, fine_tuned = _pair("tiny-vit")
    fine_tuned.train()
    before0, before1 = _snapshot(zero_shot), _snapshot(fine_tuned)
    mixed = wise_ft(zero_shot, fine_tuned, 0.4)
    with torch.no_grad():
        for p in mixed.parameters():
            p.mul_(3.0)
    for model, before in ((zero_shot, before0), (fine_tuned, before1)):
        for key, tensor in model.state_dict().items():
            assert torch.equal(tensor, before[key]), key
    assert not mixed.training and fine_tuned.training  # the result takes the zero-shot model's mode


def test_mismatched_architectures_are_refused_naming_the_first_difference():
    vit, _ = _pair("tiny-vit")
    siglip, _ = _pair("tiny-siglip")
    with pytest.raises(ValueError, match="position 1: 'visual.class_embedding' in the zero-shot model, 'logit_bias'"):
        wise_ft(vit, siglip, 0.5)
    longer = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    with pytest.raises(ValueError, match="position 2: nothing in the zero-shot model, '1.weight' in the fine-tuned"):
        wise_ft(nn.Sequential(nn.Linear(2, 2)), longer, 0.5)
    config = get_model_config("tiny-vit")
    wider = CLIP(dataclasses.replace(config, embed_dim=16))
    with pytest.raises(ValueError, match=r"'visual\.proj' is torch\.float32 \(64, 32\) in the zero-shot model"):
        wise_ft(vit, wider, 0.5)
    with pytest.raises(ValueError, match="'logit_scale' is torch.float32"):
        wise_ft(vit, CLIP(config).half(), 0.5)
    with pytest.raises(ValueError, match="same class"):
        wise_ft(vit, nn.Linear(2, 2), 0.5)


def test_differing_integer_tensors_are_refused():
    class Tagged(nn.Module):
        def __init__(self, tag: int) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.ones(3))
            self.register_buffer("vocab_ids", torch.arange(4) + tag)

    assert torch.equal(wise_ft(Tagged(0), Tagged(0), 0.5).vocab_ids, torch.arange(4))
    with pytest.raises(ValueError, match="non-float tensor 'vocab_ids'"):
        wise_ft(Tagged(0), Tagged(1), 0.5)


@pytest.mark.parametrize("alpha", [-0.1, 1.5, math.nan, math.inf, True, "0.5"])
def test_alpha_outside_unit_interval_is_refused(alpha):
    zero_shot, fine_tuned = _pair("tiny-vit")
    with pytest.raises(ValueError, match="alpha must"):
        wise_ft(zero_shot, fine_tuned, alpha)


def test_sweep_reports_metrics_per_alpha_in_order():
    zero_shot, fine_tuned = _pair("tiny-vit")
    with torch.no_grad():
        zero_shot.logit_scale.fill_(0.0)
        fine_tuned.logit_scale.fill_(2.0)
    before0 = _snapshot(zero_shot)
    seen = []

    def evaluate(model: CLIP) -> dict:
        seen.append(model)
        return {"scale": model.logit_scale.item(), "proj_norm": model.visual.proj.norm().item()}

    alphas = [0.0, 0.25, 0.5, 1.0]
    rows = wise_ft_sweep(zero_shot, fine_tuned, alphas, evaluate)
    assert [row["alpha"] for row in rows] == alphas
    assert [row["scale"] for row in rows] == pytest.approx([0.0, 0.5, 1.0, 2.0], rel=1e-6)
    assert rows[-1]["proj_norm"] == fine_tuned.visual.proj.norm().item()
    assert len({id(m) for m in seen}) == len(alphas) and all(m is not zero_shot for m in seen)
    for key, tensor in zero_shot.state_dict().items():
        assert torch.equal(tensor, before0[key]), key


def test_sweep_refuses_bad_alphas_and_bad_metrics():
    zero_shot, fine_tuned = _pair("tiny-vit")
    with pytest.raises(ValueError, match="at least one alpha"):
        wise_ft_sweep(zero_shot, fine_tuned, [], lambda m: {})
    with pytest.raises(ValueError, match="alpha must lie in"):
        wise_ft_sweep(zero_shot, fine_tuned, [0.5, 2.0], lambda m: {})
    with pytest.raises(ValueError, match="may not contain the key 'alpha'"):
        wise_ft_sweep(zero_shot, fine_tuned, [0.5], lambda m: {"alpha": 1})
    with pytest.raises(TypeError, match="mapping"):
        wise_ft_sweep(zero_shot, fine_tuned, [0.5], lambda m: 0.9)
