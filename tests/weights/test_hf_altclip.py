"""transformers AltCLIPModel folders (weights/hf_altclip.py): parity with transformers, tokenizer ids, training.

A small random AltCLIPConfig (XLM-R text width 32, 2 layers, project_dim 24; ViT width 32, 2 layers, image 32,
patch 8; projection 16) is saved with save_pretrained beside a tiny trained XLM-R-style tokenizer
(tests/support/hf_text.py), loaded with clipforge.load_model, and compared with AltCLIPModel.get_image_features /
get_text_features on L2-normalised features (bar 1e-4; measured ~1e-7).
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")

from tests.support.hf_text import make_hf_text_folder  # noqa: E402
from tests.support.tolerance import assert_close_rel  # noqa: E402

import clipforge  # noqa: E402
from clipforge.models import ConfigError  # noqa: E402
from clipforge.weights import hf, hf_altclip  # noqa: E402
from clipforge.weights.formats import CheckpointError  # noqa: E402

TOL = 1e-4
TEXTS = ["a photo of a cat sitting on the red table", "一只猫坐在红色的桌子上", "Фотография кошки 🐱", ""]


def _perturb(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Move every parameter off its init (LayerNorms start at 1/0) so a swapped key cannot go unnoticed."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return model.eval()


def _features(out) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out.pooler_output


@pytest.fixture(scope="module")
def alt_dir(tmp_path_factory):
    folder, fields = make_hf_text_folder(tmp_path_factory.mktemp("altclip"))
    text_config = dict(
        vocab_size=fields["vocab_size"], hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=80, type_vocab_size=1, project_dim=24, pad_token_id=1,
    )
    vision_config = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8
    )
    config = transformers.AltCLIPConfig(text_config=text_config, vision_config=vision_config, projection_dim=16)
    torch.manual_seed(0)
    model = _perturb(transformers.AltCLIPModel(config), 0)
    model.save_pretrained(folder)
    return folder, model


@pytest.fixture(scope="module")
def loaded(alt_dir):
    return clipforge.load_model(str(alt_dir[0])).eval()


def test_config_translation(loaded):
    t = loaded.config.text
    assert t.hf_config["model_type"] == "xlm-roberta" and t.hf_config["project_dim"] == 24
    assert (t.hf_pooler_type, t.hf_proj_type) == ("cls_last_hidden_state_pooler", "altclip")
    assert t.context_length == 78  # 80 positions less pad_id + 1 (XLM-R positions start after pad); tokenizer: 78
    assert loaded.config.embed_dim == 16 and loaded.config.vision.width == 32
    assert loaded.config.vision.act == "quick_gelu"


def test_image_features_match_transformers(alt_dir, loaded):
    _, ref = alt_dir
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = F.normalize(_features(ref.get_image_features(pixel_values=images)), dim=-1)
        got = loaded.encode_image(images, normalize=True)
    diff = (got - want).abs().max().item()
    assert diff <= TOL, f"AltCLIP image features differ by {diff:.2e}"


def test_tokenizer_ids_and_text_features_match_transformers(alt_dir, loaded):
    folder, ref = alt_dir
    tokens = clipforge.get_tokenizer(loaded)(TEXTS)
    hf_tok = transformers.AutoTokenizer.from_pretrained(folder)
    want_ids = hf_tok(TEXTS, padding="max_length", max_length=tokens.shape[1], truncation=True, return_tensors="pt")
    assert torch.equal(tokens, want_ids["input_ids"])
    with torch.no_grad():
        want = F.normalize(_features(ref.get_text_features(**want_ids)), dim=-1)
        got = loaded.encode_text(tokens, normalize=True)
    diff = (got - want).abs().max().item()
    assert diff <= TOL, f"AltCLIP text features differ by {diff:.2e}"
    assert_close_rel(loaded.logit_scale, ref.logit_scale, 1e-6, "logit_scale")


def test_missing_key_is_named(alt_dir):
    folder, ref = alt_dir
    cfg = hf.read_hf_config(folder / "config.json")
    sd = dict(ref.state_dict())
    del sd["text_model.transformation.bias"]
    with pytest.raises(CheckpointError, match="text_model.transformation.bias"):
        hf_altclip.hf_altclip_to_clipforge(sd, cfg)


def test_writing_back_is_refused_with_the_reason(loaded, tmp_path):
    """A mean-pooled text tower fits no transformers folder (writing the model itself: test_export_families.py)."""
    import dataclasses

    mean = loaded.config.replace(text=dataclasses.replace(loaded.config.text, hf_pooler_type="mean_pooler"))
    with pytest.raises(ConfigError, match="Hugging Face encoder.*save_model"):
        hf.write_hf_dir((mean, loaded.state_dict()), tmp_path)
    assert not any(tmp_path.iterdir())


def test_clipforge_format_round_trip_and_openclip_refusal(loaded, tmp_path):
    """The AltCLIP projection survives save_model / load_model; open_clip (no such projection) is refused."""
    clipforge.save_model(loaded, tmp_path / "cf")
    again = clipforge.load_model(str(tmp_path / "cf")).eval()
    assert again.config.text.hf_proj_type == "altclip"
    tokens = clipforge.get_tokenizer(loaded)(TEXTS)
    with torch.no_grad():
        assert_close_rel(again.encode_text(tokens), loaded.encode_text(tokens), 1e-6, "round-tripped text features")
    with pytest.raises(CheckpointError, match="AltCLIP text projection"):
        clipforge.save_model(loaded, tmp_path / "oc", format="openclip")
    assert not (tmp_path / "oc").exists()


def test_live_state_dict_spelling_is_accepted(alt_dir, loaded):
    """transformers 5 names the layers `encoder.layers.N` in memory, `encoder.layer.N` in files: both load."""
    folder, ref = alt_dir
    live = ref.state_dict()
    assert any(".encoder.layers." in k for k in live if k.startswith("text_model.roberta."))
    converted = hf_altclip.hf_altclip_to_clipforge(live, hf.read_hf_config(folder / "config.json"))
    for key, value in loaded.state_dict().items():
        assert torch.equal(converted[key], value), key


def test_bad_config_field_is_named(tmp_path, alt_dir):
    data = json.loads((alt_dir[0] / "config.json").read_text())
    data["text_config"]["project_dim"] = "wide"
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="config.json.*project_dim"):
        clipforge.load_model(str(tmp_path))


def test_training_step_with_grad_checkpointing_and_compile(alt_dir, loaded):
    """Backward reaches the AltCLIP projection and encoder, with checkpointing; a compiled forward agrees."""
    model = clipforge.load_model(str(alt_dir[0])).train()
    model.set_grad_checkpointing(True)
    tokens = clipforge.get_tokenizer(model)(TEXTS[:2])
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    out = model(images, tokens)
    image_f, text_f = out[0], out[1]
    (image_f @ text_f.T).logsumexp(dim=-1).sum().backward()
    for name in ("text.proj.0.weight", "text.proj.1.bias", "text.proj.2.weight", "visual.proj"):
        grad = model.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert model.text.transformer.embeddings.word_embeddings.weight.grad is not None
    compiled = torch.compile(loaded.text, backend="aot_eager")
    with torch.no_grad():
        assert_close_rel(compiled(tokens), loaded.text(tokens), 1e-5, "compiled AltCLIP text tower")
