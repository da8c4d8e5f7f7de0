"""EVA02 towers (rotary embeddings, SwiGLU, sub-LayerNorms): parity with open_clip's timm EVA towers, layout of the
full-size EVA02 configs, and training (backward, grad checkpointing, torch.compile).

Parity bar: max abs diff <= 1e-5 on L2-normalised fp32 features (as tests/weights/test_openclip.py), random weights.
"""

import dataclasses

import pytest
import torch

from clipforge.models import CLIP, ConfigError, get_model_config
from clipforge.models.config import VisionConfig
from clipforge.models.rope import apply_rope, rope_tables
from clipforge.weights.loading import build_model
from clipforge.weights.openclip import config_from_openclip, openclip_to_clipforge_keys
from support.tolerance import assert_close_rel

open_clip = pytest.importorskip("open_clip")
timm = pytest.importorskip("timm")

TOL = 1e-5
# A small EVA02-B/16: same block type, rope reference grid and eps, 2 blocks of width 64 at 64 px (4x4 patches).
SMALL_TRUNK = dict(img_size=64, depth=2, embed_dim=64, num_heads=4)
SMALL_TEXT = {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}


def _small_config():
    base = get_model_config("EVA02-B-16")
    vision = dataclasses.replace(base.vision, image_size=64, layers=2, width=64, heads=4)
    text = dataclasses.replace(base.text, width=32, heads=2, layers=2)
    return base.replace(embed_dim=32, vision=vision, text=text)


def _small_openclip(monkeypatch, timm_name="eva02_base_patch16_clip_224", **trunk):
    """open_clip's EVA02-B-16 recipe (CustomTextCLIP + TimmModel) with the timm tower shrunk: open_clip passes no
    shape arguments to timm, so timm.create_model is wrapped to add them."""
    create = timm.create_model
    monkeypatch.setattr(timm, "create_model", lambda name, **kw: create(name, **{**kw, **(trunk or SMALL_TRUNK)}))
    cfg = dict(open_clip.get_model_config("EVA02-B-16"))
    cfg.update(embed_dim=32, text_cfg=SMALL_TEXT, vision_cfg={**cfg["vision_cfg"], "timm_model_name": timm_name})
    cfg.pop("custom_text")
    torch.manual_seed(1)
    model = open_clip.CustomTextCLIP(**cfg).eval()
    with torch.no_grad():  # timm zero-inits biases and open_clip some scales: randomise all for a real test
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model


def _features(model, image_size=64):
    g = torch.Generator().manual_seed(0)
    images = torch.randn(3, 3, image_size, image_size, generator=g)
    tokens = open_clip.tokenize(["a photo of a cat", "a diagram", "", "two dogs playing in the snow at night"])
    with torch.no_grad():
        return model.encode_image(images, normalize=True), model.encode_text(tokens, normalize=True)


def test_small_eva02_matches_open_clip(monkeypatch):
    theirs = _small_openclip(monkeypatch)
    ours = CLIP(_small_config()).eval()
    ours.load_state_dict(openclip_to_clipforge_keys(theirs.state_dict()), strict=True)
    (ref_i, ref_t), (got_i, got_t) = _features(theirs), _features(ours)
    di, dt = (got_i - ref_i).abs().max().item(), (got_t - ref_t).abs().max().item()
    assert di <= TOL and dt <= TOL, f"max abs diff image {di:.2e} text {dt:.2e}"
    print(f"EVA02 small parity: max abs diff image {di:.2e} text {dt:.2e}")
    # The same through the checked loader (key and shape checks before the strict load).
    loaded = build_model(_small_config(), openclip_to_clipforge_keys(theirs.state_dict())).eval()
    assert (_features(loaded)[0] - ref_i).abs().max().item() <= TOL


def test_fused_qkv_eva_without_sub_norms_matches_timm(monkeypatch):
    """timm's eva02_tiny layout (fused qkv with q/v biases, packed GluMlp, no sub-LN, no rope reference scaling
    at its own grid) maps too: the key map's other branches."""
    theirs = _small_openclip(monkeypatch, "eva02_tiny_patch14_224", img_size=56, depth=2, embed_dim=64, num_heads=4)
    vision = VisionConfig(
        image_size=56, patch_size=14, layers=2, width=64, heads=4, mlp_ratio=4 * 2 / 3, mlp_type="swiglu", rope=True,
        rope_ref_grid=16, patch_bias=True, no_ln_pre=True, layer_norm_eps=1e-6, proj_bias=True,
    )
    ours = CLIP(_small_config().replace(vision=vision)).eval()
    ours.load_state_dict(openclip_to_clipforge_keys(theirs.state_dict()), strict=True)
    (ref_i, _), (got_i, _) = _features(theirs, 56), _features(ours, 56)
    assert (got_i - ref_i).abs().max().item() <= TOL


@pytest.mark.parametrize("name", ["EVA02-B-16", "EVA02-L-14", "EVA02-L-14-336"])
def test_named_config_is_open_clips(name):
    """The registry's JSON is what open_clip's own config for that name translates to (eos_id aside: argmax
    pooling never reads it)."""
    theirs, ours = config_from_openclip(open_clip.get_model_config(name)), get_model_config(name)
    assert theirs.replace(text=dataclasses.replace(theirs.text, eos_id=ours.text.eos_id)) == ours


def test_full_size_eva02_b16_layout_matches_open_clip():
    with torch.device("meta"):
        ours = CLIP(get_model_config("EVA02-B-16"))
        cfg = dict(open_clip.get_model_config("EVA02-B-16"))
        cfg.pop("custom_text")
        theirs = open_clip.CustomTextCLIP(**cfg)
    their_shapes = {k: tuple(v.shape) for k, v in openclip_to_clipforge_keys(theirs.state_dict()).items()}
    assert their_shapes == {k: tuple(v.shape) for k, v in ours.state_dict().items()}


def test_rope_rotates_patch_queries_by_relative_position():
    """Rotations preserve norms, and a query/key dot product depends on the offset between positions only."""
    sin, cos = rope_tables((4, 4), 16)
    x = torch.randn(16, 16)
    rotated = apply_rope(x, sin, cos)
    assert_close_rel(rotated.norm(dim=-1), x.norm(dim=-1), rel=1e-5, what="rotation norms")
    q, k = torch.randn(16), torch.randn(16)
    qs, ks = apply_rope(q.expand(16, 16), sin, cos), apply_rope(k.expand(16, 16), sin, cos)
    # grid positions (0,0)->(1,1) and (2,2)->(3,3) share the offset (1,1): row-major indices 0->5 and 10->15
    assert_close_rel(qs[0] @ ks[5], qs[10] @ ks[15], rel=1e-5, what="relative-position scores")
    with pytest.raises(ValueError, match="divisible by 4"):
        rope_tables((2, 2), 18)


def test_eva_options_are_validated():
    with pytest.raises(ConfigError, match="mlp_type"):
        VisionConfig(mlp_type="geglu")
    with pytest.raises(ConfigError, match="divisible by 4"):
        VisionConfig(rope=True, width=36, heads=2)


def test_class_token_shortcut_is_exact_with_rope():
    torch.manual_seed(0)
    model = CLIP(_small_config()).eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert_close_rel(model.visual(images), model.visual.forward_tokens(images)[0], rel=1e-5, what="shortcut")


def test_training_backward_checkpointing_and_compile():
    torch.manual_seed(0)
    model = CLIP(_small_config()).train()
    images = torch.randn(2, 3, 64, 64)

    def grads():
        model.zero_grad()
        model.encode_image(images).pow(2).sum().backward()
        return {n: p.grad.clone() for n, p in model.visual.named_parameters()}

    ref = grads()
    zero = [n for n, g in ref.items() if g.abs().sum() == 0]
    assert zero == [], f"visual parameters without gradient: {zero}"
    model.set_grad_checkpointing(True)
    ck = grads()
    for n in ref:
        assert_close_rel(ck[n], ref[n], rel=1e-5, what=f"checkpointed grad {n}")
    model.set_grad_checkpointing(False)
    model.eval()
    compiled = torch.compile(model.visual, backend="aot_eager")
    with torch.no_grad():
        assert_close_rel(compiled(images), model.visual(images), rel=1e-5, what="compiled forward")


def test_timm_tower_configs_refuse_what_open_clip_would_build_otherwise():
    """open_clip builds a timm tower at timm's size and with token pooling: other settings are refused by name."""
    from clipforge.models.config import ConfigError
    from clipforge.weights.openclip_timm import vision_from_openclip

    base = {"timm_model_name": "eva02_base_patch16_clip_224", "timm_pool": "token", "timm_proj": None}
    assert vision_from_openclip(base).image_size == 224
    with pytest.raises(ConfigError, match="image_size=256 differs from timm eva02_base_patch16_clip_224's 224"):
        vision_from_openclip({**base, "image_size": 256})
    with pytest.raises(ConfigError, match="timm_pool='avg'.*EVA-CLIP's configs"):
        vision_from_openclip({**base, "timm_pool": "avg"})
