"""ViT-based MobileCLIP (MobileCLIP-B, MobileCLIP2-B, MobileCLIP2-L-14): parity with open_clip's timm towers (the
MCi convolutional stem, patch-only positions, a pre-norm timm CLIP ViT), layout of the full-size configs, refusal
of the FastViT-based ones, and training (backward, grad checkpointing, torch.compile).

Parity bar: max abs diff <= 1e-4 on L2-normalised fp32 features, random weights (measured ~1e-7).
"""

import dataclasses
import json

import pytest
import torch

from clipforge.models import CLIP, ConfigError, get_model_config
from clipforge.models.config import VisionConfig
from clipforge.weights.families import UnsupportedFamilyError, refuse_openclip_config, refuse_state_dict
from clipforge.weights.loading import build_model
from clipforge.weights.openclip import config_from_openclip, openclip_to_clipforge_keys
from support.tolerance import assert_close_rel

open_clip = pytest.importorskip("open_clip")
timm = pytest.importorskip("timm")

TOL = 1e-4
SMALL_TEXT = {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}
NAMES = ["MobileCLIP-B", "MobileCLIP2-B", "MobileCLIP2-L-14"]


def _small_mci_trunk(**kw):
    """timm's vit_base_mci_224 recipe shrunk: the same ConvStem (width/4 inner channels, strides 4-2-2), hybrid
    embedding without projection, no_embed_class; 2 blocks of width 64 at 64 px (4x4 tokens)."""
    from timm.models.vision_transformer_hybrid import ConvStem, _create_vision_transformer_hybrid

    stem = ConvStem(channels=(16, 16, 64), stride=(4, 2, 2), kernel_size=(4, 2, 2), padding=0, act_layer=torch.nn.GELU)
    kw = {**kw, "img_size": 64, "embed_dim": 64, "depth": 2, "num_heads": 4, "no_embed_class": True}
    return _create_vision_transformer_hybrid("vit_base_mci_224", backbone=stem, embed_args=dict(proj=False), **kw)


def _small_openclip(monkeypatch, name):
    """open_clip's own recipe for `name` (CustomTextCLIP + TimmModel) with the timm tower shrunk (open_clip passes no
    shape arguments to timm, so timm.create_model is wrapped), every parameter and BatchNorm statistic randomised."""
    create = timm.create_model
    if name == "MobileCLIP2-L-14":
        small = dict(img_size=56, depth=2, embed_dim=64, num_heads=4)
        monkeypatch.setattr(timm, "create_model", lambda n, **kw: create(n, **{**kw, **small}))
    else:
        monkeypatch.setattr(timm, "create_model", lambda n, **kw: _small_mci_trunk(**kw))
    cfg = dict(open_clip.get_model_config(name))
    cfg.pop("custom_text")
    cfg.update(embed_dim=32, text_cfg={**cfg["text_cfg"], **SMALL_TEXT})
    cfg["vision_cfg"] = {**cfg["vision_cfg"], "image_size": 56 if name == "MobileCLIP2-L-14" else 64}
    torch.manual_seed(1)
    model = open_clip.CustomTextCLIP(**cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
        for mod in model.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):  # non-trivial running statistics: eval BN is an affine map
                mod.running_mean.normal_(0, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
    return model


def _small_config(name):
    base = get_model_config(name)
    size = 56 if name == "MobileCLIP2-L-14" else 64
    vision = dataclasses.replace(base.vision, image_size=size, layers=2, width=64, heads=4)
    text = dataclasses.replace(base.text, width=32, heads=2, layers=2)
    return base.replace(embed_dim=32, vision=vision, text=text)


def _features(model, image_size):
    g = torch.Generator().manual_seed(0)
    images = torch.randn(3, 3, image_size, image_size, generator=g)
    tokens = open_clip.tokenize(["a photo of a cat", "a diagram", "", "two dogs playing in the snow at night"])
    with torch.no_grad():
        return model.encode_image(images, normalize=True), model.encode_text(tokens, normalize=True)


@pytest.mark.parametrize("name", ["MobileCLIP-B", "MobileCLIP2-L-14"])
def test_small_mobileclip_matches_open_clip(monkeypatch, name):
    theirs = _small_openclip(monkeypatch, name)
    cfg = _small_config(name)
    size = cfg.vision.image_size
    ours = build_model(cfg, openclip_to_clipforge_keys(theirs.state_dict())).eval()
    (ref_i, ref_t), (got_i, got_t) = _features(theirs, size), _features(ours, size)
    di, dt = (got_i - ref_i).abs().max().item(), (got_t - ref_t).abs().max().item()
    print(f"{name} small parity: max abs diff image {di:.2e} text {dt:.2e}")
    assert di <= TOL and dt <= TOL, f"max abs diff image {di:.2e} text {dt:.2e}"


@pytest.mark.parametrize("name", NAMES)
def test_named_config_is_open_clips(name):
    """The registry's JSON is what open_clip's own config for that name translates to (eos_id aside: argmax
    pooling never reads it)."""
    theirs, ours = config_from_openclip(open_clip.get_model_config(name)), get_model_config(name)
    assert theirs.replace(text=dataclasses.replace(theirs.text, eos_id=ours.text.eos_id)) == ours


@pytest.mark.parametrize("name", ["MobileCLIP-B", "MobileCLIP2-L-14"])
def test_full_size_layout_matches_open_clip(name):
    with torch.device("meta"):
        ours = CLIP(get_model_config(name))
        cfg = dict(open_clip.get_model_config(name))
        cfg.pop("custom_text")
        theirs = open_clip.CustomTextCLIP(**cfg)
    their_shapes = {k: tuple(v.shape) for k, v in openclip_to_clipforge_keys(theirs.state_dict()).items()}
    assert their_shapes == {k: tuple(v.shape) for k, v in ours.state_dict().items()}


def test_fastvit_mobileclip_stays_refused():
    """fastvit_mci0..4 towers are read (models/fastvit.py); other FastViTs and fused (reparam_conv) weights are not."""
    with pytest.raises(UnsupportedFamilyError, match="MobileCLIP"):
        refuse_openclip_config({"vision_cfg": {"timm_model_name": "fastvit_sa12"}}, "fastvit_sa12")
    for name in (*NAMES, "MobileCLIP-S1", "MobileCLIP2-S0", "MobileCLIP2-S4"):
        refuse_openclip_config(open_clip.get_model_config(name), name)  # supported: no refusal
    fastvit = {"visual.trunk.stages.0.blocks.0.token_mixer.mixer.reparam_conv.weight": torch.zeros(1)}
    with pytest.raises(UnsupportedFamilyError, match="MobileCLIP-B"):  # the message names the supported ones
        refuse_state_dict(fastvit, "ckpt")


def test_mci_options_are_validated():
    with pytest.raises(ConfigError, match="patch_size 16"):
        VisionConfig(conv_stem=True, patch_size=14)
    with pytest.raises(ConfigError, match="not a ViT"):
        VisionConfig(no_embed_class=True, patch_size=None, layers=(1, 1, 1, 1))


def test_patch_positions_only_and_class_token_shortcut():
    """no_embed_class: the class token enters the blocks as the bare learned vector; the shortcut stays exact."""
    torch.manual_seed(0)
    model = CLIP(_small_config("MobileCLIP-B")).eval()
    visual = model.visual
    assert visual.positional_embedding.shape == (16, 64)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        embedded = visual.embed(images)  # (2, 1 + 16, 64)
        assert torch.equal(embedded[:, 0], visual.class_embedding.expand(2, -1))
        assert_close_rel(visual(images), visual.forward_tokens(images)[0], rel=1e-5, what="shortcut")


def test_training_backward_checkpointing_and_compile():
    torch.manual_seed(0)
    model = CLIP(_small_config("MobileCLIP-B")).train()
    images = torch.randn(2, 3, 64, 64)
    model.visual.conv1.eval()  # BatchNorm in eval: the same statistics in both gradient runs

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


@pytest.mark.parametrize("name", ["MobileCLIP-B", "MobileCLIP2-L-14"])
def test_writers_refuse_rather_than_drop_the_stem(name):
    """open_clip keeps these towers as timm models and HF CLIP has a plain patch conv: both refuse, not mis-write."""
    from clipforge.weights.families import writable_refusal
    from clipforge.weights.hf import config_to_hf

    assert "--to clipforge" in writable_refusal(get_model_config(name), "openclip")
    with pytest.raises(ConfigError, match="cannot express"):
        config_to_hf(get_model_config(name))


def test_position_interpolation_with_patch_only_positions():
    """A smaller input (CLIPA-style phases) resamples the patch-only position grid; no class position is split off."""
    torch.manual_seed(0)
    model = CLIP(_small_config("MobileCLIP-B")).eval()
    model.visual.set_position_interpolation(True)
    with torch.no_grad():
        assert model.visual._positions(torch.Size([32, 32])).shape == (4, 64)  # 2x2 patch grid, no class row
        assert model.visual(torch.randn(2, 3, 32, 32)).shape == (2, 32)


def test_models_cli_names_the_mci_tower(capsys):
    from clipforge.cli.main import main

    assert main(["models", "--json"]) == 0
    rows = {row["model"]: row["image"] for row in json.loads(capsys.readouterr().out)}
    names = ("MobileCLIP-B", "MobileCLIP2-B", "MobileCLIP2-L-14")
    assert [rows[n] for n in names] == ["MCi-ViT/16", "MCi-ViT/16", "ViT/14"]
    assert main(["models", "--pretrained", "--json"]) == 0
    tags = {(row["model"], row["tag"]) for row in json.loads(capsys.readouterr().out)}
    assert {("MobileCLIP-B", "datacompdr"), ("MobileCLIP-B", "datacompdr_lt"), ("MobileCLIP2-L-14", "dfndr2b")} <= tags


def test_native_save_load_keeps_the_stem_and_its_batchnorm_statistics(tmp_path):
    """clipforge's own format holds the MCi stem, including BatchNorm running statistics (buffers), exactly."""
    from clipforge.weights.loading import load_model, save_model

    torch.manual_seed(0)
    model = CLIP(_small_config("MobileCLIP-B")).eval()
    with torch.no_grad():
        model.visual.conv1[0].bn.running_mean.normal_(0, 0.1)
        model.visual.conv1[1].bn.running_var.uniform_(0.5, 1.5)
    loaded = load_model(save_model(model, tmp_path / "mobileclip"))
    assert loaded.config == model.config
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
