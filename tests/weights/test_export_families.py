"""Writing issue 11's families where the target format can hold them: SigLIP and EVA02 as open_clip folders (timm
trunk names + a model config naming the timm tower), AltCLIP and Chinese-CLIP as transformers folders; what no
format can hold stays refused by `check_writable` with its reason.

Each writer is checked by the reference library loading the written folder itself (open_clip's `local-dir:`
loading, transformers' `from_pretrained`): features within 1e-4 of clipforge's on L2-normalised fp32 features
(random weights), and clipforge reading the folder back gets bitwise the weights it wrote.

open_clip names a timm tower and cannot take a shape, so the small open_clip models here are a named tower's
recipe shrunk: the test swaps the timm name's table row (clipforge's side) and wraps `timm.create_model` to build
the same small shape (open_clip's side), as tests/models/test_openclip_siglip.py does.
"""

import dataclasses

import pytest
import torch

from clipforge.models import CLIP, ConfigError, get_model_config
from clipforge.weights import openclip_siglip, openclip_timm
from clipforge.weights.families import check_writable, writable_refusal
from clipforge.weights.formats import CheckpointError
from clipforge.weights.loading import load_model, save_model

open_clip = pytest.importorskip("open_clip")
timm = pytest.importorskip("timm")

TOL = 1e-4
SMALL_TRUNK = dict(img_size=64, depth=2, embed_dim=64, num_heads=4)
SMALL_ROW = dict(image_size=64, patch_size=16, width=64, layers=2, heads=4)


def _randomised(cfg):
    """A CLIP of `cfg` with every parameter moved off its initial value (zero biases, unit norms would hide maps)."""
    torch.manual_seed(0)
    model = CLIP(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model


def _shrink_timm(monkeypatch, table, name, row):
    """clipforge's table says timm `name` is the small `row`; timm builds `name` at that small shape."""
    monkeypatch.setitem(table, name, {**table[name], **row})
    create = timm.create_model
    monkeypatch.setattr(timm, "create_model", lambda model_name, **kw: create(model_name, **{**kw, **SMALL_TRUNK}))


def _small_siglip():
    base = get_model_config("ViT-B-16-SigLIP")
    vision = dataclasses.replace(base.vision, **SMALL_ROW)
    text = dataclasses.replace(base.text, width=32, heads=2, layers=2, vocab_size=1000)
    return base.replace(embed_dim=64, vision=vision, text=text)


def _small_eva():
    base = get_model_config("EVA02-B-16")
    vision = dataclasses.replace(base.vision, **SMALL_ROW)
    text = dataclasses.replace(base.text, width=32, heads=2, layers=2, vocab_size=1000)
    return base.replace(embed_dim=32, vision=vision, text=text)


def _features(model, pad_id):
    g = torch.Generator().manual_seed(0)
    images = torch.randn(3, 3, 64, 64, generator=g)
    tokens = torch.randint(3, 1000, (4, model.context_length if hasattr(model, "context_length") else 64), generator=g)
    tokens[:, 20:] = pad_id
    tokens[:, 19] = 2  # an end-of-text id for last-token pooling
    with torch.no_grad():
        return model.encode_image(images, normalize=True), model.encode_text(tokens, normalize=True)


def _zero_key_bias(model):
    """EVA has no key bias; clipforge's packed in_proj_bias has one (zeros in a model read from EVA)."""
    with torch.no_grad():
        for block in model.visual.transformer.resblocks:
            width = block.attn.in_proj_bias.shape[0] // 3
            block.attn.in_proj_bias[width : 2 * width] = 0


def _check_openclip_round_trip(model, folder, pad_id):
    theirs = open_clip.create_model(f"local-dir:{folder}", pretrained=str(folder / "open_clip_model.safetensors"))
    ref_i, ref_t = _features(model, pad_id)
    got_i, got_t = _features(theirs.eval(), pad_id)
    di, dt = (got_i - ref_i).abs().max().item(), (got_t - ref_t).abs().max().item()
    print(f"open_clip loads the written folder: max abs diff image {di:.2e} text {dt:.2e}")
    assert di <= TOL and dt <= TOL, f"max abs diff image {di:.2e} text {dt:.2e}"
    back = load_model(folder)
    assert back.config == model.config
    ours, again = model.state_dict(), back.state_dict()
    assert sorted(ours) == sorted(again)
    for key, value in ours.items():
        assert torch.equal(again[key], value), key
    return theirs


def test_siglip_writes_an_open_clip_folder_open_clip_loads(monkeypatch, tmp_path):
    _shrink_timm(monkeypatch, openclip_siglip.TIMM_SIGLIP_TOWERS, "vit_base_patch16_siglip_224", SMALL_ROW)
    model = _randomised(_small_siglip())
    check_writable(model.config, "openclip")
    save_model(model, tmp_path, "openclip")
    theirs = _check_openclip_round_trip(model, tmp_path, pad_id=1)
    assert isinstance(theirs, open_clip.CustomTextCLIP)
    assert torch.equal(theirs.logit_bias.detach().reshape(()), model.logit_bias.detach())


def test_eva02_writes_an_open_clip_folder_open_clip_loads(monkeypatch, tmp_path):
    _shrink_timm(monkeypatch, openclip_timm.TIMM_EVA_TOWERS, "eva02_base_patch16_clip_224", SMALL_ROW)
    model = _randomised(_small_eva())
    with pytest.raises(ConfigError, match="nonzero key bias"):  # rope makes a key bias matter: refused, not dropped
        save_model(model, tmp_path, "openclip")
    assert not any(tmp_path.iterdir())  # refused before any file was written
    _zero_key_bias(model)
    save_model(model, tmp_path, "openclip")
    _check_openclip_round_trip(model, tmp_path, pad_id=0)


def test_eva02_without_projection_bias_uses_open_clips_head_proj(monkeypatch, tmp_path):
    """A bias-free projection is open_clip's `timm_proj: "linear"` head (visual.head.proj), not the trunk's head."""
    _shrink_timm(monkeypatch, openclip_timm.TIMM_EVA_TOWERS, "eva02_base_patch16_clip_224", SMALL_ROW)
    cfg = _small_eva()
    model = _randomised(cfg.replace(vision=dataclasses.replace(cfg.vision, proj_bias=False)))
    _zero_key_bias(model)
    save_model(model, tmp_path, "openclip")
    theirs = _check_openclip_round_trip(model, tmp_path, pad_id=0)
    assert "visual.head.proj.weight" in theirs.state_dict()


@pytest.mark.parametrize("name", ["ViT-B-16-SigLIP", "ViT-SO400M-14-SigLIP-378", "EVA02-B-16", "EVA02-L-14-336"])
def test_full_size_written_config_is_open_clips(name):
    """The written model config builds open_clip's own model for that name (meta device): same keys, same shapes;
    clipforge reads the config back to the named config."""
    from clipforge.weights.openclip import config_from_openclip, config_to_openclip, openclip_state_dict

    cfg = get_model_config(name)
    written = config_to_openclip(cfg)
    model_cfg = dict(written["model_cfg"])
    reference = open_clip.get_model_config(name)["vision_cfg"]
    assert model_cfg["vision_cfg"] == {**reference, "image_size": cfg.vision.image_size}
    assert model_cfg.pop("custom_text")
    with torch.device("meta"):
        theirs = {k: tuple(v.shape) for k, v in open_clip.CustomTextCLIP(**model_cfg).state_dict().items()}
        ours = {k: tuple(v.shape) for k, v in openclip_state_dict(cfg, CLIP(cfg).state_dict()).items()}
    assert ours == theirs
    assert config_from_openclip(written["model_cfg"], written["preprocess_cfg"]) == cfg


def test_siglip_and_eva_shapes_no_timm_model_has_are_refused_naming_the_known_ones():
    siglip = _small_siglip()
    assert "vit_base_patch16_siglip_224" in writable_refusal(siglip, "openclip")
    with pytest.raises(CheckpointError, match="no timm model open_clip can build"):
        check_writable(_small_eva(), "openclip")
