"""open_clip checkpoints with a Hugging Face text tower load end to end (weights/openclip_hftext.py, loading.py).

The reference is open_clip 3.3 building a CustomTextCLIP whose `hf_model_name` is a local folder holding a tiny
random XLM-R config and tokenizer (tests/support/hf_text.py), saved in open_clip's hub layout by open_clip itself
(`save_for_hf`: open_clip_config.json + open_clip_model.safetensors + tokenizer files). clipforge must load that
folder with `load_model`, give the same normalised features (<= 1e-4) and token ids, and export a folder open_clip
loads back. Also: Long-CLIP state dicts (positional_embedding_res) fold into one position table when read.
"""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from safetensors.torch import save_file

import clipforge
from clipforge.models import CLIP, CLIPConfig, TextConfig, VisionConfig
from clipforge.models.long_context import LONGCLIP_KEEP
from clipforge.weights.formats import CheckpointError
from clipforge.weights.openclip import config_from_openclip, config_to_openclip
from clipforge.weights.openclip_hftext import HF_TEXT_CONFIG_KEY, clean_hf_text_state_dict, named_hf_config
from support.hf_text import make_hf_text_folder
from support.tolerance import assert_close_rel

pytest.importorskip("transformers")
open_clip = pytest.importorskip("open_clip")

TEXTS = ["a photo of a cat", "一只猫坐在红色的桌子上", "صورة قطة تجلس 🙂", "Фотография кошки", ""]
VISION = {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16}
TOL = 1e-4  # issue 11's parity bar on L2-normalised fp32 features


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    return make_hf_text_folder(tmp_path_factory.mktemp("hf"))


def _model_cfg(folder, pooler: str = "mean_pooler", proj: str = "mlp") -> dict:
    return {
        "embed_dim": 24,
        "vision_cfg": VISION,
        "text_cfg": {
            "hf_model_name": str(folder),
            "hf_tokenizer_name": str(folder),
            "hf_model_pretrained": False,
            "hf_pooler_type": pooler,
            "hf_proj_type": proj,
            "context_length": 20,
        },
        "custom_text": True,
    }


def _register(tmp_path, name: str, model_cfg: dict) -> None:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(model_cfg))
    open_clip.add_model_config(path)


@pytest.fixture(scope="module")
def hub_folder(tmp_path_factory, hf_folder):
    """(open_clip model, its tokenizer, the hub-layout folder open_clip saved it to)."""
    from open_clip.push_to_hf_hub import save_for_hf

    tmp = tmp_path_factory.mktemp("oc")
    folder, _ = hf_folder
    model_cfg = _model_cfg(folder)
    _register(tmp, "cf-hftext-e2e", model_cfg)
    torch.manual_seed(0)
    model = open_clip.create_model("cf-hftext-e2e", pretrained_hf=False).eval()
    with torch.no_grad():  # open_clip zero-inits nothing here, but randomise the logit scale too
        model.logit_scale.fill_(2.5)
    tokenizer = open_clip.get_tokenizer("cf-hftext-e2e")
    out = tmp / "hub"
    save_for_hf(model, tokenizer, model_cfg, out, safe_serialization=True)
    return model, tokenizer, out


def _features(model, tokens, images):
    with torch.no_grad():
        return model.encode_text(tokens, normalize=True), model.encode_image(images, normalize=True)


def test_openclip_hub_folder_loads_end_to_end(hub_folder):
    """load_model(folder) of open_clip's own hub layout: same ids, same features, same logit scale."""
    reference, ref_tokenizer, folder = hub_folder
    assert (folder / "open_clip_config.json").exists() and (folder / "tokenizer.json").exists()
    model = clipforge.load_model(folder).eval()
    assert model.config.text.is_hf and model.config.text.hf_config["model_type"] == "xlm-roberta"
    tokens = clipforge.get_tokenizer(model)(TEXTS)
    assert torch.equal(tokens, ref_tokenizer(TEXTS))
    images = torch.randn(3, 3, 32, 32)
    text, image = _features(model, tokens, images)
    ref_text, ref_image = _features(reference, tokens, images)
    diff = (text - ref_text).abs().max().item()
    assert diff <= TOL, f"text features differ from open_clip's by {diff:.2e}"
    assert (image - ref_image).abs().max().item() <= TOL
    assert_close_rel(model.logit_scale, reference.logit_scale.reshape(()), 1e-6, "logit_scale")


def test_export_to_openclip_reloads_in_open_clip(tmp_path, hub_folder):
    """save_model(format='openclip') writes text_cfg.hf_* back; open_clip builds it and loads the weights."""
    reference, ref_tokenizer, folder = hub_folder
    model = clipforge.load_model(folder).eval()
    out = clipforge.save_model(model, tmp_path / "export", format="openclip")
    data = json.loads((out / "open_clip_config.json").read_text())
    text_cfg = data["model_cfg"]["text_cfg"]
    assert text_cfg["hf_pooler_type"] == "mean_pooler" and text_cfg["hf_proj_type"] == "mlp"
    assert data[HF_TEXT_CONFIG_KEY]["model_type"] == "xlm-roberta"  # stored copy: reloads offline
    _register(tmp_path, "cf-hftext-export", data["model_cfg"])
    reloaded = open_clip.create_model(
        "cf-hftext-export", pretrained=str(out / "open_clip_model.safetensors"), pretrained_hf=False
    ).eval()
    tokens = ref_tokenizer(TEXTS)
    images = torch.randn(2, 3, 32, 32)
    text, image = _features(reloaded, tokens, images)
    ref_text, ref_image = _features(reference, tokens, images)
    assert (text - ref_text).abs().max().item() <= TOL
    assert (image - ref_image).abs().max().item() <= TOL
    # and clipforge reads its own export back, the encoder fields from the stored copy
    again = clipforge.load_model(out).eval()
    assert again.config.text.hf_config == model.config.text.hf_config


def test_hf_config_found_beside_weights_when_not_stored(tmp_path, hub_folder, hf_folder):
    """A folder whose hf_model_name is a hub name (not reachable) finds the encoder's config.json beside it."""
    _, _, folder = hub_folder
    enc_folder, fields = hf_folder
    copy = tmp_path / "copy"
    copy.mkdir()
    data = json.loads((folder / "open_clip_config.json").read_text())
    data["model_cfg"]["text_cfg"]["hf_model_name"] = "someone/not-a-real-encoder-for-tests"
    (copy / "open_clip_config.json").write_text(json.dumps(data))
    (copy / "open_clip_model.safetensors").write_bytes((folder / "open_clip_model.safetensors").read_bytes())
    (copy / "config.json").write_text(json.dumps(fields))
    config = clipforge.load_model(copy).config
    assert config.text.hf_config == fields
    (copy / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json"):
        clipforge.load_model(copy)


def test_config_from_openclip_needs_encoder_fields(hf_folder):
    folder, fields = hf_folder
    model_cfg = _model_cfg(folder, pooler="cls_pooler", proj="linear")
    with pytest.raises(clipforge.models.ConfigError, match="hf_model_name"):
        config_from_openclip(model_cfg)
    config = config_from_openclip(model_cfg, None, fields)
    assert config.text.hf_pooler_type == "cls_pooler" and config.text.hf_proj_type == "linear"
    round_trip = config_to_openclip(config)
    assert config_from_openclip(round_trip["model_cfg"], None, round_trip[HF_TEXT_CONFIG_KEY]).text == config.text


def test_stale_position_ids_buffers_are_dropped():
    state = {"text.transformer.embeddings.position_ids": torch.arange(5)[None], "text.proj.weight": torch.ones(2)}
    assert list(clean_hf_text_state_dict(state)) == ["text.proj.weight"]


def test_named_configs_store_encoder_fields():
    """The stored copies of LAION's multilingual encoders (no download to build them)."""
    base, large = named_hf_config("xlm-roberta-base"), named_hf_config("xlm-roberta-large")
    assert base["hidden_size"] == 768 and base["num_hidden_layers"] == 12 and base["vocab_size"] == 250002
    assert large["hidden_size"] == 1024 and large["num_hidden_layers"] == 24
    assert named_hf_config("roberta-base")["vocab_size"] == 50265
    assert named_hf_config("no-such-encoder") is None


def _tiny_clip(context_length: int = 77) -> CLIP:
    text = TextConfig(context_length=context_length, vocab_size=300, width=32, heads=2, layers=1)
    vision = VisionConfig(image_size=32, layers=1, width=32, patch_size=16, heads=2)
    torch.manual_seed(0)
    return CLIP(CLIPConfig(embed_dim=16, vision=vision, text=text)).eval()


@pytest.mark.parametrize("openai_layout", [True, False])
def test_longclip_state_dict_merges_positions(tmp_path, openai_layout):
    """A Long-CLIP-style file (positional_embedding + positional_embedding_res, 248 rows) loads as one table:
    rows < 20 from the first, the rest from the second, and the model takes 248 tokens."""
    model = _tiny_clip(248)
    state = {k[len("text."):] if k.startswith("text.") else k: v for k, v in model.state_dict().items()}
    base = state["positional_embedding"]
    res = torch.randn_like(base)
    state["positional_embedding_res"] = res
    if openai_layout:
        state["input_resolution"] = torch.tensor(32)  # OpenAI's metadata entries: read as an OpenAI file
    path = tmp_path / "longclip.safetensors"
    save_file(state, str(path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the open_clip layout's "architecture inferred" warning
        loaded = clipforge.load_model(path)
    assert loaded.config.text.context_length == 248
    table = loaded.text.positional_embedding.detach()
    assert torch.equal(table[:LONGCLIP_KEEP], base[:LONGCLIP_KEEP])
    assert torch.equal(table[LONGCLIP_KEEP:], res[LONGCLIP_KEEP:])
    assert "text.positional_embedding_res" not in loaded.state_dict()

