"""transformers SiglipModel interop (weights/hf_siglip.py): parity with transformers' forward, both directions.

A small random SiglipConfig (vision width 64, 2 layers, image 32, patch 8; text width 48 -> projection 64) is
saved with save_pretrained, loaded by clipforge, and compared with SiglipModel.get_image_features /
get_text_features on L2-normalised features (bar 1e-5, as test_hf.py; measured ~3e-7) and on the logits.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")

import clipforge  # noqa: E402
from clipforge.models import CLIP, ConfigError  # noqa: E402
from clipforge.models.registry import get_model_config  # noqa: E402
from clipforge.weights import hf_siglip  # noqa: E402
from clipforge.weights.formats import CheckpointError  # noqa: E402

TOL = 1e-5
CONTEXT = 16
VOCAB = 300


def _hf_config(**vision: object) -> transformers.SiglipConfig:
    text_config = dict(
        vocab_size=VOCAB,
        hidden_size=48,
        intermediate_size=176,
        num_hidden_layers=2,
        num_attention_heads=3,
        max_position_embeddings=CONTEXT,
        projection_size=64,
        pad_token_id=1,
        eos_token_id=2,
    )
    vision_config = dict(
        hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8
    )
    vision_config.update(vision)
    return transformers.SiglipConfig(text_config=text_config, vision_config=vision_config)


def _perturb(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Move every parameter off its init (LayerNorms start at 1/0) so a swapped key cannot go unnoticed."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return model.eval()


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    torch.manual_seed(0)
    model = _perturb(transformers.SiglipModel(_hf_config()), 0)
    folder = tmp_path_factory.mktemp("siglip")
    model.save_pretrained(folder)
    return folder, model


def _inputs():
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(3, 3, 32, 32, generator=gen)
    tokens = torch.randint(3, VOCAB, (4, CONTEXT), generator=gen)
    tokens[:, -3:] = 1  # SigLIP pads to the full length; the last position (pooled) is padding
    tokens[:2, 5] = 2
    return images, tokens


def _hf_features(model, images, tokens):
    with torch.no_grad():
        img = model.get_image_features(pixel_values=images)
        txt = model.get_text_features(input_ids=tokens)
        img = getattr(img, "pooler_output", img)
        txt = getattr(txt, "pooler_output", txt)
        logits = model(input_ids=tokens, pixel_values=images).logits_per_image
    return F.normalize(img, dim=-1), F.normalize(txt, dim=-1), logits


def _check_parity(cf: CLIP, ref, what: str) -> None:
    images, tokens = _inputs()
    hf_img, hf_txt, hf_logits = _hf_features(ref, images, tokens)
    with torch.no_grad():
        img = cf.encode_image(images, normalize=True)
        txt = cf.encode_text(tokens, normalize=True)
        logits, _ = cf.get_logits(images, tokens)
    for name, ours, theirs in (("image", img, hf_img), ("text", txt, hf_txt)):
        diff = (ours - theirs).abs().max().item()
        assert diff <= TOL, f"{what}: {name} features differ by {diff:.2e} (> {TOL})"
    scale = hf_logits.abs().max().item()
    assert (logits - hf_logits).abs().max().item() <= TOL * max(scale, 1.0), f"{what}: logits differ"


def test_hf_siglip_loads_into_clipforge_with_parity(hf_dir):
    folder, ref = hf_dir
    model = clipforge.load_model(str(folder)).eval()
    cfg = model.config
    assert cfg.vision.pool_type == "map" and not cfg.vision.class_token and cfg.vision.no_proj
    assert cfg.text.pool_type == "last" and not cfg.text.causal_mask and cfg.embed_dim == 64
    assert model.logit_bias is not None
    assert torch.equal(model.logit_bias.reshape(1), ref.logit_bias.detach())
    _check_parity(model, ref, "HF -> clipforge")


def test_clipforge_export_loads_in_transformers_with_parity(tmp_path):
    torch.manual_seed(3)
    model = _perturb(clipforge.create_model("tiny-siglip-map"), 3)
    out = clipforge.save_model(model, tmp_path / "hf", format="hf")
    assert json.loads((out / "config.json").read_text())["model_type"] == "siglip"
    assert not (out / "vocab.json").exists()  # CLIP's BPE files would be the wrong tokenizer
    ref = transformers.SiglipModel.from_pretrained(out).eval()
    _check_parity(model, ref, "clipforge -> HF")
    back = clipforge.load_model(str(out))
    for key, value in model.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key


def test_round_trip_of_state_dict_is_exact():
    cfg = get_model_config("tiny-siglip-map")
    torch.manual_seed(0)
    sd = CLIP(cfg).state_dict()
    hf_sd = hf_siglip.clipforge_to_hf_siglip(sd, cfg)
    assert hf_sd["logit_scale"].shape == (1,)
    back = hf_siglip.hf_siglip_to_clipforge(hf_sd, cfg)
    assert back.keys() == sd.keys() and all(torch.equal(back[k], sd[k]) for k in sd)


def test_missing_head_key_is_named(hf_dir):
    folder, ref = hf_dir
    cfg = hf_siglip.config_from_hf_siglip(json.loads((folder / "config.json").read_text()))
    sd = {k: v for k, v in ref.state_dict().items() if k != "vision_model.head.probe"}
    with pytest.raises(CheckpointError, match="vision_model.head.probe"):
        hf_siglip.hf_siglip_to_clipforge(sd, cfg)


def test_siglip2_config_is_refused_by_the_siglip_reader_naming_siglip():
    # Siglip2Model folders go through weights/hf_siglip2.py (tests/weights/test_hf_siglip2.py), not this reader.
    with pytest.raises(ConfigError, match="SigLIP 2.*hf_siglip2.*closest supported family is SigLIP"):
        hf_siglip.config_from_hf_siglip({"model_type": "siglip2", "text_config": {}, "vision_config": {}})


def test_inexpressible_configs_are_refused():
    with pytest.raises(ConfigError, match="class token"):
        hf_siglip.config_to_hf_siglip(get_model_config("tiny-vit"))  # not SigLIP-shaped at all
    cfg = hf_siglip.config_from_hf_siglip(_hf_config().to_dict())
    with pytest.raises(ConfigError, match="projection_size"):
        bad = _hf_config().to_dict()
        bad["text_config"]["projection_size"] = 32
        hf_siglip.config_from_hf_siglip(bad)
    with pytest.raises(ConfigError, match="vision_use_head"):
        hf_siglip.config_from_hf_siglip(_hf_config(vision_use_head=False).to_dict())
    assert cfg.vision.act == "gelu_tanh" and cfg.vision.layer_norm_eps == 1e-6
