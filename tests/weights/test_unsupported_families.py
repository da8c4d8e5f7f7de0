"""Unsupported checkpoint families (weights/families.py) are refused naming the family and the closest supported one.

Each case is a tiny hand-built file with only what marks its family: CoCa's text_decoder keys, MobileCLIP's
FastViT blocks, BLIP's BERT encoder, ALIGN's EfficientNet, a SigLIP 2 patch Linear; config.json model_types;
open_clip configs with multimodal_cfg or a FastViT timm tower. Conversions a target format cannot hold are
refused before anything is written.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

import clipforge
from clipforge.cli import convert as convert_cli
from clipforge.models.registry import get_model_config
from clipforge.weights.families import UnsupportedFamilyError, detect_state_dict_family

T = torch.zeros(2, 2)
STATE_DICTS = {
    "CoCa": {"visual.conv1.weight": T, "text.token_embedding.weight": T, "text_decoder.resblocks.0.ln_1.weight": T},
    "MobileCLIP": {"visual.trunk.stages.0.blocks.0.token_mixer.mixer.reparam_conv.weight": T, "logit_scale": T},
    "BLIP": {"vision_model.embeddings.patch_embedding.weight": T, "text_encoder.encoder.layer.0.output.dense.bias": T},
    "ALIGN": {"vision_model.embeddings.convolution.weight": T, "text_model.encoder.layer.0.output.dense.bias": T},
    "SigLIP 2 (NaFlex)": {"vision_model.embeddings.patch_embedding.weight": T, "text_model.head.weight": T},
}
CLOSEST = {"CoCa": "ViT-B-32", "MobileCLIP": "ViT-B-16", "BLIP": "CLIPModel", "ALIGN": "CLIPModel",
           "SigLIP 2 (NaFlex)": "SigLIP"}


@pytest.mark.parametrize("family", sorted(STATE_DICTS))
def test_state_dict_families_are_named(tmp_path, family):
    path = tmp_path / "model.safetensors"
    save_file({k: v.clone() for k, v in STATE_DICTS[family].items()}, path)
    with pytest.raises(UnsupportedFamilyError) as info:
        clipforge.load_model(str(path))
    message = str(info.value)
    assert f"a {family} checkpoint" in message and CLOSEST[family] in message and str(path) in message
    assert info.value.family.name == family


def test_supported_state_dicts_are_not_flagged():
    for name in ("tiny-vit", "tiny-siglip-map", "tiny-convnext"):
        with torch.device("meta"):
            sd = clipforge.create_model(name).state_dict()
        assert detect_state_dict_family(sd, {k: tuple(v.shape) for k, v in sd.items()}) is None, name


@pytest.mark.parametrize(
    ("model_type", "family", "closest"),
    [("blip", "BLIP", "CLIPModel"), ("align", "ALIGN", "CLIPModel")],
)
def test_hf_config_families_are_named(tmp_path, model_type, family, closest):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": model_type}))
    with pytest.raises(UnsupportedFamilyError, match=f"{family}.*closest supported family is .*{closest}"):
        clipforge.load_model(str(tmp_path))


@pytest.mark.parametrize(
    ("model_cfg", "family"),
    [({"embed_dim": 512, "multimodal_cfg": {"width": 512}, "vision_cfg": {}, "text_cfg": {}}, "CoCa"),
     ({"embed_dim": 512, "vision_cfg": {"timm_model_name": "fastvit_sa12"}, "text_cfg": {}}, "MobileCLIP")],
)
def test_openclip_config_families_are_named(tmp_path, model_cfg, family):
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg}))
    save_file({"logit_scale": torch.zeros(())}, tmp_path / "open_clip_model.safetensors")
    with pytest.raises(UnsupportedFamilyError, match=f"a {family} checkpoint"):
        clipforge.load_model(str(tmp_path))


def test_cli_refuses_with_model_error_exit_code(tmp_path, capsys):
    path = tmp_path / "coca.safetensors"
    save_file({k: v.clone() for k, v in STATE_DICTS["CoCa"].items()}, path)
    assert convert_cli.main([str(path), str(tmp_path / "out")]) == 4
    assert "CoCa" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def _small_eva():
    cfg = get_model_config("EVA02-B-16")
    vision = cfg.vision.__class__(**{**cfg.vision.__dict__, "image_size": 32, "patch_size": 8, "layers": 1,
                                      "width": 64, "heads": 4, "rope_ref_grid": 4})
    text = cfg.text.__class__(**{**cfg.text.__dict__, "width": 32, "heads": 2, "layers": 1, "context_length": 8})
    return cfg.replace(vision=vision, text=text, embed_dim=32)


@pytest.mark.parametrize(
    ("source", "target", "match"),
    [("tiny-siglip-map", "openclip", "timm models .*--to hf"), ("eva", "openclip", "eva02_"),
     ("eva", "hf", "CLIPModel cannot express")],
)
def test_conversions_the_target_cannot_hold_are_refused(tmp_path, source, target, match):
    cfg = _small_eva() if source == "eva" else get_model_config(source)
    model = clipforge.models.CLIP(cfg)
    with pytest.raises(Exception, match=match):
        clipforge.save_model(model, tmp_path / "out", format=target)
    assert not (tmp_path / "out" / "open_clip_config.json").exists()


def test_siglip_clipforge_hf_round_trip_via_cli(tmp_path):
    torch.manual_seed(0)
    model = clipforge.create_model("tiny-siglip-map")
    clipforge.save_model(model, tmp_path / "cf")
    assert convert_cli.main([str(tmp_path / "cf"), str(tmp_path / "hf"), "--to", "hf"]) == 0
    assert convert_cli.main([str(tmp_path / "hf"), str(tmp_path / "cf2"), "--to", "clipforge"]) == 0
    back = clipforge.load_model(str(tmp_path / "cf2"))
    for key, value in model.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key
