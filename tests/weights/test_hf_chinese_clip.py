"""transformers ChineseCLIPModel folders (weights/hf_chinese_clip.py): parity with transformers, tokenizer ids.

A small random ChineseCLIPConfig (BERT text width 32, 2 layers; ViT width 32, 2 layers, image 32, patch 8;
projection 16) is saved with save_pretrained beside a tiny WordPiece vocab.txt (BertTokenizer, as the
OFA-Sys/chinese-clip-* folders), loaded with clipforge.load_model, and compared with ChineseCLIPModel's
get_image_features / get_text_features on L2-normalised features (bar 1e-4; measured ~1e-7).
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")

import clipforge  # noqa: E402
from clipforge.models import ConfigError  # noqa: E402
from clipforge.weights import hf, hf_chinese_clip  # noqa: E402
from clipforge.weights.formats import CheckpointError  # noqa: E402

TOL = 1e-4
CONTEXT = 12  # the tokenizer's model_max_length: below the 40 positions, so it caps the context length
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = ["a", "photo", "of", "cat", "dog", "the", "red", "table", "##s", ",", "."]
CHARS = list("一只猫坐在红色的桌子上小狗照片")
# the last one is longer than CONTEXT: truncated with [SEP] kept
TEXTS = ["一只猫坐在红色的桌子上", "A photo of cats, the RED table.", "小狗的照片 dog", "一只猫坐在红色的桌子上" * 2]


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
def cn_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("chinese_clip")
    vocab = SPECIALS + WORDS + CHARS
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "BertTokenizer", "do_lower_case": True, "model_max_length": CONTEXT})
    )
    text_config = dict(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=40,
    )
    vision_config = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8
    )
    config = transformers.ChineseCLIPConfig(text_config=text_config, vision_config=vision_config, projection_dim=16)
    torch.manual_seed(0)
    model = _perturb(transformers.ChineseCLIPModel(config), 0)
    model.save_pretrained(folder)
    return folder, model


@pytest.fixture(scope="module")
def loaded(cn_dir):
    return clipforge.load_model(str(cn_dir[0])).eval()


def test_config_translation(loaded, cn_dir):
    t = loaded.config.text
    assert t.hf_config["model_type"] == "bert" and t.hf_config["layer_norm_eps"] == 1e-12
    assert (t.hf_pooler_type, t.hf_proj_type) == ("cls_last_hidden_state_pooler", "linear")
    assert t.context_length == CONTEXT and t.hf_tokenizer_name == str(cn_dir[0])
    assert loaded.config.embed_dim == 16 and loaded.config.vision.patch_size == 8


def test_image_features_match_transformers(cn_dir, loaded):
    _, ref = cn_dir
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = F.normalize(_features(ref.get_image_features(pixel_values=images)), dim=-1)
        got = loaded.encode_image(images, normalize=True)
    diff = (got - want).abs().max().item()
    assert diff <= TOL, f"Chinese-CLIP image features differ by {diff:.2e}"


def test_tokenizer_ids_and_text_features_match_transformers(cn_dir, loaded):
    folder, ref = cn_dir
    tokens = clipforge.get_tokenizer(loaded)(TEXTS)
    assert tokens.shape == (len(TEXTS), CONTEXT)
    hf_tok = transformers.BertTokenizer.from_pretrained(folder)
    want_ids = hf_tok(TEXTS, padding="max_length", max_length=CONTEXT, truncation=True, return_tensors="pt")
    assert torch.equal(tokens, want_ids["input_ids"])
    assert (tokens == 1).sum() == 0  # every text is covered by the vocabulary: no [UNK]
    with torch.no_grad():
        want = F.normalize(_features(ref.get_text_features(**want_ids)), dim=-1)
        got = loaded.encode_text(tokens, normalize=True)
    diff = (got - want).abs().max().item()
    assert diff <= TOL, f"Chinese-CLIP text features differ by {diff:.2e}"


def test_missing_and_unexpected_keys_are_named(cn_dir):
    folder, ref = cn_dir
    cfg = hf.read_hf_config(folder / "config.json")
    sd = dict(ref.state_dict())
    sd["text_model.pooler.dense.weight"] = torch.zeros(32, 32)
    del sd["text_projection.weight"]
    with pytest.raises(CheckpointError, match="text_projection.weight.*text_model.pooler.dense.weight"):
        hf_chinese_clip.hf_chinese_clip_to_clipforge(sd, cfg)


def test_writing_back_is_refused_with_the_reason(loaded, tmp_path):
    """A mean-pooled text tower fits no transformers folder (writing the model itself: test_export_families.py)."""
    import dataclasses

    mean = loaded.config.replace(text=dataclasses.replace(loaded.config.text, hf_pooler_type="mean_pooler"))
    with pytest.raises(ConfigError, match="Hugging Face encoder.*save_model"):
        hf.write_hf_dir((mean, loaded.state_dict()), tmp_path)


def test_bad_text_config_is_named(tmp_path, cn_dir):
    data = json.loads((cn_dir[0] / "config.json").read_text())
    data["text_config"]["hidden_size"] = -4
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="config.json.*text_config.hidden_size"):
        clipforge.load_model(str(tmp_path))


def test_training_step_reaches_both_towers(cn_dir):
    model = clipforge.load_model(str(cn_dir[0])).train()
    model.set_grad_checkpointing(True)
    tokens = clipforge.get_tokenizer(model)(TEXTS[:2])
    out = model(torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2)), tokens)
    (out[0] @ out[1].T).logsumexp(dim=-1).sum().backward()
    for name in ("text.proj.weight", "text.transformer.embeddings.word_embeddings.weight", "visual.conv1.weight"):
        grad = model.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name
