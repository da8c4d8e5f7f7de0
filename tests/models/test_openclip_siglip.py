"""open_clip's SigLIP models (timm `vit_*_siglip_*` image towers, open_clip's non-causal text tower): parity with
open_clip on a small config, layout of the full-size named configs, named configs equal to open_clip's JSON, and
training (backward, grad checkpointing, torch.compile).

Parity bar: max abs diff <= 1e-4 on L2-normalised fp32 features (issue 11), random weights.
"""

import dataclasses

import pytest
import torch

from clipforge.models import CLIP, ConfigError, get_model_config
from clipforge.weights.loading import build_model
from clipforge.weights.openclip import config_from_openclip, openclip_to_clipforge_keys
from clipforge.weights.openclip_siglip import clipforge_to_siglip_keys, siglip_to_clipforge_keys, vision_from_openclip
from support.tolerance import assert_close_rel

open_clip = pytest.importorskip("open_clip")
timm = pytest.importorskip("timm")

TOL = 1e-4
SIGLIP_PRE = {"mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bicubic", "resize_mode": "squash"}
# ViT-B-16-SigLIP's recipe with the timm tower shrunk: 2 blocks of width 64 at 64 px (4x4 patches of 16).
SMALL_TRUNK = dict(img_size=64, depth=2, embed_dim=64, num_heads=4)
SMALL_TEXT = dict(width=32, heads=2, layers=2, vocab_size=1000)
NAMED = [
    "ViT-B-16-SigLIP", "ViT-B-16-SigLIP-256", "ViT-B-16-SigLIP-384", "ViT-B-16-SigLIP-512",
    "ViT-B-16-SigLIP-i18n-256", "ViT-L-16-SigLIP-256", "ViT-L-16-SigLIP-384", "ViT-SO400M-14-SigLIP",
    "ViT-SO400M-14-SigLIP-378", "ViT-SO400M-14-SigLIP-384",
]


def _small_openclip_cfg():
    cfg = dict(open_clip.get_model_config("ViT-B-16-SigLIP"))
    cfg.update(embed_dim=64, text_cfg={**cfg["text_cfg"], **SMALL_TEXT})  # image_size stays 224: timm ignores it
    cfg.pop("custom_text")
    return cfg


def _small_config():
    base = get_model_config("ViT-B-16-SigLIP")
    vision = dataclasses.replace(base.vision, image_size=64, layers=2, width=64, heads=4)
    text = dataclasses.replace(base.text, **SMALL_TEXT)
    return base.replace(embed_dim=64, vision=vision, text=text)


def _small_openclip(monkeypatch):
    """open_clip passes no shape arguments to timm, so timm.create_model is wrapped to add them."""
    create = timm.create_model
    monkeypatch.setattr(timm, "create_model", lambda name, **kw: create(name, **{**kw, **SMALL_TRUNK}))
    torch.manual_seed(1)
    model = open_clip.CustomTextCLIP(**_small_openclip_cfg()).eval()
    with torch.no_grad():  # timm zero-inits biases and the latent's scale is small: randomise all for a real test
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model


def _features(model):
    g = torch.Generator().manual_seed(0)
    images = torch.randn(3, 3, 64, 64, generator=g)
    tokens = torch.randint(2, 1000, (4, 64), generator=g)
    tokens[:, 40:] = 1  # right padding, as SigLIP's tokenizer pads
    with torch.no_grad():
        return model.encode_image(images, normalize=True), model.encode_text(tokens, normalize=True)


def test_small_siglip_matches_open_clip(monkeypatch):
    theirs = _small_openclip(monkeypatch)
    ours = CLIP(_small_config()).eval()
    ours.load_state_dict(openclip_to_clipforge_keys(theirs.state_dict()), strict=True)
    (ref_i, ref_t), (got_i, got_t) = _features(theirs), _features(ours)
    di, dt = (got_i - ref_i).abs().max().item(), (got_t - ref_t).abs().max().item()
    print(f"open_clip SigLIP small parity: max abs diff image {di:.2e} text {dt:.2e}")
    assert di <= TOL and dt <= TOL, f"max abs diff image {di:.2e} text {dt:.2e}"
    loaded = build_model(_small_config(), openclip_to_clipforge_keys(theirs.state_dict())).eval()
    assert (_features(loaded)[0] - ref_i).abs().max().item() <= TOL


def test_key_map_round_trips(monkeypatch):
    sd = _small_openclip(monkeypatch).state_dict()
    back = clipforge_to_siglip_keys(siglip_to_clipforge_keys(sd))
    assert sorted(back) == sorted(sd)
    for key, value in sd.items():
        assert torch.equal(back[key], value), key


def test_unknown_trunk_key_is_refused_naming_it(monkeypatch):
    sd = dict(_small_openclip(monkeypatch).state_dict())
    sd["visual.trunk.cls_token"] = torch.zeros(1, 1, 64)
    with pytest.raises(ConfigError, match="visual.trunk.cls_token"):
        siglip_to_clipforge_keys(sd)


@pytest.mark.parametrize("name", NAMED)
def test_named_config_is_open_clips(name):
    """The registry's JSON is what open_clip's own config for that name translates to, with open_clip's SigLIP
    preprocessing (pretrained.py `_slpcfg`: mean/std 0.5, bicubic, squash)."""
    assert config_from_openclip(open_clip.get_model_config(name), SIGLIP_PRE) == get_model_config(name)


def test_unsupported_siglip_towers_are_refused_clearly():
    """(ViT-SO400M-14-SigLIP-384's partial last patch is supported: tests/models/test_partial_patch.py.)"""
    base = open_clip.get_model_config("ViT-B-16-SigLIP")["vision_cfg"]
    gap = {**base, "timm_model_name": "vit_base_patch16_siglip_gap_224"}
    with pytest.raises(ConfigError, match="not supported"):
        vision_from_openclip(gap)
    with pytest.raises(ConfigError, match="timm_pool='avg'"):
        vision_from_openclip({**open_clip.get_model_config("ViT-B-16-SigLIP")["vision_cfg"], "timm_pool": "avg"})


@pytest.mark.parametrize("name", ["ViT-B-16-SigLIP", "ViT-SO400M-14-SigLIP-378"])
def test_full_size_layout_matches_open_clip(name):
    with torch.device("meta"):
        ours = CLIP(get_model_config(name))
        cfg = dict(open_clip.get_model_config(name))
        cfg.pop("custom_text")
        theirs = open_clip.CustomTextCLIP(**cfg)
    their_shapes = {k: tuple(v.shape) for k, v in openclip_to_clipforge_keys(theirs.state_dict()).items()}
    assert their_shapes == {k: tuple(v.shape) for k, v in ours.state_dict().items()}


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
