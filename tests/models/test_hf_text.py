"""Hugging Face text towers (models/hf_text.py): parity with open_clip's HFTextEncoder, training, Long-CLIP positions.

The reference is open_clip 3.3 building a CustomTextCLIP whose `hf_model_name` is a local folder holding a tiny
random XLM-R config and tokenizer (tests/support/hf_text.py), `hf_model_pretrained: false`: nothing is
downloaded, both sides hold the same random weights, and features must agree within 1e-4 after L2 norm.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from clipforge.models import CLIP, CLIPConfig, ConfigError, TextConfig, VisionConfig
from clipforge.text.hf_tokenizer import HFTokenizer
from support.hf_text import make_hf_text_folder
from support.tolerance import assert_close_rel

pytest.importorskip("transformers")  # the HF text tower builds a transformers encoder

TEXTS = ["a photo of a cat", "一只猫坐在红色的桌子上", "صورة قطة تجلس 🙂", "लाल मेज पर बैठी एक बिल्ली", ""]
VISION = {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16}


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    return make_hf_text_folder(tmp_path_factory.mktemp("hf"))


def _config(fields: dict, pooler: str = "mean_pooler", proj: str = "mlp", embed_dim: int = 24) -> CLIPConfig:
    text = TextConfig(context_length=20, hf_config=dict(fields), hf_pooler_type=pooler, hf_proj_type=proj)
    vision = VisionConfig(image_size=32, layers=1, width=32, patch_size=16, heads=2)
    return CLIPConfig(embed_dim=embed_dim, vision=vision, text=text)


def _openclip_model(tmp_path, folder, pooler: str, proj: str, embed_dim: int = 24):
    open_clip = pytest.importorskip("open_clip")
    name = f"cf-test-hf-{pooler}-{proj}-{embed_dim}"
    cfg = {
        "embed_dim": embed_dim,
        "vision_cfg": VISION,
        "text_cfg": {
            "hf_model_name": str(folder),
            "hf_tokenizer_name": str(folder),
            "hf_model_pretrained": False,
            "hf_pooler_type": pooler,
            "hf_proj_type": proj,
            "context_length": 20,
        },
    }
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(cfg))
    open_clip.add_model_config(path)
    torch.manual_seed(0)
    return open_clip.create_model(name, pretrained_hf=False).eval(), open_clip.get_tokenizer(name)


@pytest.mark.parametrize(
    ("pooler", "proj"), [("mean_pooler", "mlp"), ("cls_pooler", "linear"), ("cls_last_hidden_state_pooler", "linear")]
)
def test_text_features_match_open_clip(tmp_path, hf_folder, pooler, proj):
    """Same random weights in open_clip and clipforge: same ids, same normalised text features (<= 1e-4)."""
    folder, fields = hf_folder
    reference, ref_tokenizer = _openclip_model(tmp_path, folder, pooler, proj)
    model = CLIP(_config(fields, pooler, proj)).eval()
    model.load_state_dict(reference.state_dict())  # open_clip's CustomTextCLIP names: text.transformer.*, text.proj.*
    tokens = HFTokenizer(folder, 20)(TEXTS)
    assert torch.equal(tokens, ref_tokenizer(TEXTS))
    with torch.no_grad():
        expected = reference.encode_text(tokens, normalize=True)
        actual = model.encode_text(tokens, normalize=True)
        images = torch.randn(2, 3, 32, 32)
        assert_close_rel(model.encode_image(images), reference.encode_image(images), 1e-5, "image features")
    diff = (actual - expected).abs().max().item()
    assert diff <= 1e-4, f"text features differ from open_clip's by {diff:.2e}"


def test_identity_projection_when_widths_match(hf_folder):
    folder, fields = hf_folder
    model = CLIP(_config(fields, proj="none", embed_dim=32))
    assert isinstance(model.text.proj, torch.nn.Identity)
    with pytest.raises(ConfigError, match="hf_proj_type='none'"):
        CLIP(_config(fields, proj="none", embed_dim=24))


def test_padding_does_not_change_features(hf_folder):
    """Mean pooling over the attention mask: more padding, same feature."""
    folder, fields = hf_folder
    torch.manual_seed(0)
    model = CLIP(_config(fields)).eval()
    tokenizer = HFTokenizer(folder, 20)
    with torch.no_grad():
        short_ids, long_ids = tokenizer(["a cat", "a dog"], context_length=12), tokenizer(["a cat", "a dog"])
        assert torch.equal(long_ids[:, :12], short_ids) and (long_ids[:, 8:] == tokenizer.pad_token_id).all()
        short, long = model.encode_text(short_ids), model.encode_text(long_ids)
    assert_close_rel(short, long, 1e-5, "features with more padding")


def test_forward_embeddings_matches_forward(hf_folder):
    folder, fields = hf_folder
    torch.manual_seed(0)
    model = CLIP(_config(fields)).eval()
    tokens = HFTokenizer(folder, 20)(TEXTS)
    with torch.no_grad():
        embedded = model.text.token_embedding(tokens)
        assert_close_rel(
            model.encode_text_embeddings(embedded, tokens), model.encode_text(tokens), 1e-5, "embeddings path"
        )


def test_config_round_trip_and_errors(hf_folder):
    _, fields = hf_folder
    config = _config(fields, pooler="cls_pooler", proj="linear")
    assert CLIPConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert not TextConfig().is_hf and TextConfig().hf_config is None
    with pytest.raises(ConfigError, match="hf_pooler_type"):
        TextConfig(hf_config=dict(fields), hf_pooler_type="max")
    with pytest.raises(ConfigError, match="model_type"):
        TextConfig(hf_config={"hidden_size": 8})
    with pytest.raises(ConfigError, match="not a supported"):
        CLIP(_config({**fields, "model_type": "gpt2"}))


def test_too_long_tokens_are_refused(hf_folder):
    _, fields = hf_folder
    model = CLIP(_config(fields))
    with pytest.raises(ValueError, match="exceeds this text encoder's 78 positions"):
        model.encode_text(torch.full((1, 79), 5))


def test_training_step_with_grad_checkpointing_matches_plain(hf_folder):
    """Forward/backward reaches the encoder; checkpointed gradients equal plain ones (dropout off)."""
    folder, fields = hf_folder
    fields = {**fields, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    tokens = HFTokenizer(folder, 20)(TEXTS)
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = CLIP(_config(fields)).train()
        model.set_grad_checkpointing(checkpointing)
        model.encode_text(tokens, normalize=True).pow(2).sum(dim=0).mean().backward()
        grad = model.text.transformer.encoder.layer[0].attention.self.query.weight.grad
        assert grad is not None and grad.abs().sum() > 0
        grads.append(grad)
    checking = getattr(model.text.transformer, "is_activation_checkpointing", None)
    assert checking if checking is not None else model.text.transformer.is_gradient_checkpointing
    assert_close_rel(grads[1], grads[0], 1e-5, "checkpointed gradient")


def test_torch_compile_forward(hf_folder):
    folder, fields = hf_folder
    torch.manual_seed(0)
    model = CLIP(_config(fields)).eval()
    tokens = HFTokenizer(folder, 20)(TEXTS[:2])
    compiled = torch.compile(model.text, backend="aot_eager")
    with torch.no_grad():
        assert_close_rel(compiled(tokens), model.text(tokens), 1e-5, "compiled text tower")


def test_lock_keeps_last_layers_and_projection_trainable(hf_folder):
    _, fields = hf_folder
    model = CLIP(_config(fields))
    model.text.lock(unlocked_layers=1)
    trainable = {n for n, p in model.text.named_parameters() if p.requires_grad}
    assert any(n.startswith("transformer.encoder.layer.1.") for n in trainable)
    assert not any(n.startswith(("transformer.encoder.layer.0.", "transformer.embeddings.")) for n in trainable)
    assert {"proj.0.weight", "proj.2.weight"} <= trainable
    model.text.lock(0)
    assert {n for n, p in model.text.named_parameters() if p.requires_grad} == {"proj.0.weight", "proj.2.weight"}


def test_existing_configs_unchanged():
    """The new fields default to CLIP's own tower: an existing config builds the TextTransformer as before."""
    from clipforge.models.registry import get_model_config
    from clipforge.models.text import TextTransformer

    config = get_model_config("tiny-vit")
    assert config.text.hf_config is None and not config.text.is_hf
    assert CLIPConfig.from_dict(config.to_dict()) == config
    assert isinstance(CLIP(config).text, TextTransformer)


def test_openclip_checkpoint_translation(tmp_path, hf_folder):
    """open_clip's text_cfg + the encoder's config.json -> the same TextConfig; old position_ids buffers dropped."""
    from clipforge.weights.openclip_hftext import clean_hf_text_state_dict, text_config_from_openclip

    folder, fields = hf_folder
    reference, _ = _openclip_model(tmp_path, folder, "mean_pooler", "mlp")
    text_cfg = {"hf_model_name": str(folder), "hf_tokenizer_name": str(folder), "context_length": 20}
    text = text_config_from_openclip(text_cfg, fields)
    assert text == dataclasses.replace(_config(fields).text, hf_model_name=str(folder), hf_tokenizer_name=str(folder))
    model = CLIP(_config(fields).replace(text=text)).eval()
    state = dict(reference.state_dict())
    state["text.transformer.embeddings.position_ids"] = torch.arange(80)[None]  # as transformers < 4.31 saved
    model.load_state_dict(clean_hf_text_state_dict(state))
    tokens = HFTokenizer(folder, 20)(TEXTS)
    with torch.no_grad():
        assert_close_rel(model.encode_text(tokens), reference.encode_text(tokens), 1e-5, "translated model")
    with pytest.raises(ConfigError, match="model_type"):
        text_config_from_openclip(text_cfg, {"hidden_size": 8})
