"""open_clip's SigLIP 2 models (timm `vit_*_siglip_*` image towers, Gemma-vocabulary text tower with tanh GELU):
named configs equal to open_clip's JSON, the timm towers they use, and parity with open_clip on `tiny-siglip2`
(the ViT-B-32-SigLIP2-256 recipe shrunk) fed ids of a tiny Gemma-style tokenizer.

Parity bar: max abs diff <= 1e-4 on L2-normalised fp32 features (issue 11), random weights. The full-size
layouts (256k x width token embeddings included) are compared on the meta device by
tests/models/test_architectures.py::test_full_size_layout_matches_open_clip, which covers every name here.
"""

import pytest
import torch

from clipforge.models import CLIP, ConfigError, get_model_config, list_models
from clipforge.weights.openclip import config_from_openclip, openclip_to_clipforge_keys
from clipforge.weights.openclip_siglip import TIMM_SIGLIP_TOWERS, vision_from_openclip
from support.gemma_tokenizer import CORPUS, EXTRA, make_gemma_folder
from support.tolerance import assert_close_rel

open_clip = pytest.importorskip("open_clip")
timm = pytest.importorskip("timm")

TOL = 1e-4
SIGLIP_PRE = {"mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bicubic", "resize_mode": "squash"}
NAMED = [
    "ViT-B-32-SigLIP2-256", "ViT-B-16-SigLIP2", "ViT-B-16-SigLIP2-256", "ViT-B-16-SigLIP2-384", "ViT-B-16-SigLIP2-512",
    "ViT-L-16-SigLIP2-256", "ViT-L-16-SigLIP2-384", "ViT-L-16-SigLIP2-512", "ViT-SO400M-14-SigLIP2",
    "ViT-SO400M-14-SigLIP2-378", "ViT-SO400M-16-SigLIP2-256", "ViT-SO400M-16-SigLIP2-384",
    "ViT-SO400M-16-SigLIP2-512", "ViT-gopt-16-SigLIP2-256", "ViT-gopt-16-SigLIP2-384",
]  # fmt: skip
# tiny-siglip2's image tower as timm kwargs (open_clip passes none: timm.create_model is wrapped to add them).
TINY_TRUNK = dict(img_size=32, patch_size=8, depth=2, embed_dim=64, num_heads=4)
TINY_TEXT = dict(width=32, heads=2, layers=2, vocab_size=49408)


def test_every_open_clip_siglip2_config_is_registered():
    theirs = {name for name in open_clip.list_models() if "SigLIP2" in name}
    assert theirs == set(NAMED)
    assert set(NAMED) <= set(list_models())


@pytest.mark.parametrize("name", NAMED)
def test_named_config_is_open_clips(name):
    """The registry's JSON is what open_clip's own config translates to (Gemma vocabulary 256000, context 64,
    last-token pooling, projection bias, eps 1e-6, tanh GELU in the text tower, logit bias -10), with open_clip's
    SigLIP preprocessing (mean/std 0.5, bicubic, squash)."""
    config = get_model_config(name)
    assert config_from_openclip(open_clip.get_model_config(name), SIGLIP_PRE) == config
    t = config.text
    assert (t.vocab_size, t.context_length, t.pool_type, t.proj_bias, t.act, t.causal_mask) == (
        256000, 64, "last", True, "gelu_tanh", False
    )
    assert (t.layer_norm_eps, config.vision.layer_norm_eps, config.init_logit_bias) == (1e-6, 1e-6, -10.0)
    assert t.hf_tokenizer_name == f"timm/{name}"


TOWERS = sorted({open_clip.get_model_config(n)["vision_cfg"]["timm_model_name"] for n in NAMED})


@pytest.mark.parametrize("name", TOWERS)
def test_tower_table_matches_timms_registration(name):
    """Each timm tower SigLIP 2 uses: clipforge's row (shape and activation) against timm's model on meta."""
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False)
    row = TIMM_SIGLIP_TOWERS[name]
    assert row["image_size"] == model.patch_embed.img_size[0]
    assert row["patch_size"] == model.patch_embed.patch_size[0]
    assert (row["width"], row["layers"]) == (model.embed_dim, len(model.blocks))
    assert row["heads"] == model.blocks[0].attn.num_heads
    assert row.get("mlp_ratio", 4.0) == pytest.approx(model.blocks[0].mlp.fc1.out_features / model.embed_dim, 1e-3)
    tanh = type(model.blocks[0].mlp.act).__name__ == "GELUTanh"
    cfg = vision_from_openclip({"timm_model_name": name, "timm_pool": "map", "timm_proj": "none",
                                "image_size": row["image_size"]})
    assert cfg.act == ("gelu_tanh" if tanh else "gelu")


def test_gap_and_unknown_towers_are_refused():
    with pytest.raises(ConfigError, match="'_gap' towers are not"):
        vision_from_openclip({"timm_model_name": "vit_giantopt_patch16_siglip_gap_256", "timm_pool": "map",
                              "timm_proj": "none"})


@pytest.fixture(scope="module")
def gemma_folder(tmp_path_factory):
    return make_gemma_folder(tmp_path_factory.mktemp("gemma"))


def _tiny_openclip(monkeypatch):
    cfg = dict(open_clip.get_model_config("ViT-B-32-SigLIP2-256"))
    cfg.pop("custom_text")
    cfg.update(embed_dim=64, text_cfg={**cfg["text_cfg"], **TINY_TEXT})
    create = timm.create_model
    monkeypatch.setattr(timm, "create_model", lambda name, **kw: create(name, **{**kw, **TINY_TRUNK}))
    torch.manual_seed(2)
    model = open_clip.CustomTextCLIP(**cfg).eval()
    with torch.no_grad():  # timm zero-inits biases; randomise everything so that no mismatch hides
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model


def test_tiny_siglip2_matches_open_clip(monkeypatch, gemma_folder):
    pytest.importorskip("transformers")  # open_clip's HFTokenizer
    theirs = _tiny_openclip(monkeypatch)
    ours = CLIP(get_model_config("tiny-siglip2")).eval()
    ours.load_state_dict(openclip_to_clipforge_keys(theirs.state_dict()), strict=True)
    texts = CORPUS + EXTRA
    # open_clip's SigLIP 2 tokenizer (its tokenizer_kwargs); clipforge's ids equal: tests/text/test_hub_tokenizer.py
    their_tok = open_clip.tokenizer.HFTokenizer(str(gemma_folder), context_length=64, clean="canonicalize")
    tokens = their_tok(texts)  # (N, 64)
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref_i, ref_t = theirs.encode_image(images, normalize=True), theirs.encode_text(tokens, normalize=True)
        got_i, got_t = ours.encode_image(images, normalize=True), ours.encode_text(tokens, normalize=True)
    di, dt = (got_i - ref_i).abs().max().item(), (got_t - ref_t).abs().max().item()
    print(f"open_clip SigLIP 2 tiny parity: max abs diff image {di:.2e} text {dt:.2e}")
    assert di <= TOL and dt <= TOL, f"max abs diff image {di:.2e} text {dt:.2e}"
    # Unnormalised too, scale-relative: exact GELU for tanh GELU moves these by ~1e-3 relative, which the
    # normalised features can hide under 1e-4 on small random weights.
    with torch.no_grad():
        assert_close_rel(ours.encode_text(tokens), theirs.encode_text(tokens), rel=1e-5, what="text features")
        assert_close_rel(ours.encode_image(images), theirs.encode_image(images), rel=1e-5, what="image features")
