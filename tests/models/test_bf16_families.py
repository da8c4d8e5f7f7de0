"""bf16 inference of the issue-11 families: a tiny SigLIP (MAP head), EVA02 (rope, SwiGLU, sub-LN), ConvNeXt and
Hugging Face text (XLM-R) CLIP agree with their fp32 selves within bf16's precision, both ways of running bf16:

- the model cast with `.to(torch.bfloat16)`: features come out in bfloat16 (the model's dtype; `encode_image`
  casts the images to the tower's dtype);
- an fp32 model under `torch.autocast("cpu", dtype=torch.bfloat16)`: matmuls in bf16; features come out in
  bfloat16 where the last op is an autocast matmul (a projection) and float32 where it is a norm.

The bar is relative to the features' scale, their unit L2 norm (bf16 keeps 8 significant bits, eps 2^-7 ~ 7.8e-3):
max abs diff <= 2e-2 on L2-normalised features, and a cosine to fp32 above 0.999. Measured on random tiny models:
<= 8e-3 (EVA02 images, the largest); relative to the largest component instead the same error reads up to ~2e-2 and
varies with the seed, hence the unit-norm scale. A wrong bf16 path (a dtype mismatch, an fp32-only op, a mask or rope
table cast badly) fails by far more.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from clipforge.models import CLIP, CLIPConfig, TextConfig, get_model_config
from support.hf_text import tiny_xlmr_fields
from support.tolerance import assert_close_rel

REL = 2e-2


def _eva02() -> CLIPConfig:
    base = get_model_config("EVA02-B-16")
    vision = dataclasses.replace(base.vision, image_size=64, layers=2, width=64, heads=4)
    text = dataclasses.replace(base.text, width=32, heads=2, layers=2)
    return base.replace(embed_dim=32, vision=vision, text=text)


def _hf_text() -> CLIPConfig:
    pytest.importorskip("transformers")
    text = TextConfig(context_length=20, hf_config=tiny_xlmr_fields(300), hf_model_name="tiny-xlmr")
    return get_model_config("tiny-vit").replace(text=text)


FAMILIES = {
    "siglip": lambda: get_model_config("tiny-siglip-map"),
    "eva02": _eva02,
    "convnext": lambda: get_model_config("tiny-convnext"),
    "hf-text": _hf_text,
}


def _inputs(model: CLIP) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    size = model.config.vision.image_size
    images = torch.randn(4, 3, size, size, generator=g)
    tokens = torch.randint(3, 250, (4, model.config.text.context_length), generator=g)
    tokens[:, -3:] = model.config.text.pad_id if model.config.text.is_hf else 0  # some padding for masked towers
    tokens[:, -4] = model.config.text.eos_id if not model.config.text.is_hf else 2
    return images, tokens


def _features(model: CLIP, images: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        return model.encode_image(images), model.encode_text(tokens)


def _check(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    got, want = F.normalize(got.float(), dim=-1), F.normalize(want.float(), dim=-1)
    assert_close_rel(got, want, rel=REL, scale=1.0, what=what)  # scale: the features' unit norm
    cos = (got * want).sum(-1).min().item()
    assert cos > 0.999, f"{what}: cosine to fp32 {cos:.5f}"


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request):
    torch.manual_seed(0)
    model = CLIP(FAMILIES[request.param]()).eval()
    with torch.no_grad():  # move zero-initialised biases and unit scales too, so every parameter counts
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
        if request.param == "eva02":  # EVA has no key bias: the k third of in_proj_bias stays zero (vision.key_bias)
            for block in model.visual.transformer.resblocks:
                block.attn.in_proj_bias.chunk(3)[1].zero_()
    images, tokens = _inputs(model)
    return request.param, model, images, tokens, _features(model, images, tokens)


def test_bf16_cast_model_matches_fp32(family):
    name, model, images, tokens, (ref_i, ref_t) = family
    cast = CLIP(model.config).eval()
    cast.load_state_dict(model.state_dict())
    cast.to(torch.bfloat16)
    got_i, got_t = _features(cast, images, tokens)  # fp32 images: encode_image casts them to the tower's dtype
    assert got_i.dtype == got_t.dtype == torch.bfloat16, "a bf16 model's features are bf16 (the model's dtype)"
    _check(got_i, ref_i, f"{name} bf16 image features")
    _check(got_t, ref_t, f"{name} bf16 text features")


def test_bf16_autocast_matches_fp32(family):
    name, model, images, tokens, (ref_i, ref_t) = family
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got_i, got_t = _features(model, images, tokens)
    assert got_i.dtype in (torch.bfloat16, torch.float32) and got_t.dtype in (torch.bfloat16, torch.float32)
    _check(got_i, ref_i, f"{name} autocast image features")
    _check(got_t, ref_t, f"{name} autocast text features")
    assert next(model.parameters()).dtype == torch.float32, "autocast leaves the weights in fp32"
