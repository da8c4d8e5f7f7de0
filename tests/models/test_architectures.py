"""Every registered architecture: builds, runs, trains, and matches open_clip's parameter layout."""

import pytest
import torch

from clipforge.models import CLIP, CLIPConfig, ConfigError, get_model_config, list_models
from clipforge.models.registry import OPENAI_NAMES
from support.tolerance import assert_close_rel

TINY = [name for name in list_models() if name.startswith("tiny")]
FULL = [name for name in list_models() if not name.startswith("tiny")]


def _inputs(model: CLIP, batch: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    size = model.image_size
    images = torch.randn(batch, 3, size, size, generator=g)
    tokens = torch.zeros(batch + 1, model.context_length, dtype=torch.long)
    for row in range(batch + 1):
        n = 3 + row * 4
        tokens[row, 0] = 49406
        tokens[row, 1 : n + 1] = torch.randint(1, 49000, (n,), generator=g)
        tokens[row, n + 1] = 49407
    return images, tokens


@pytest.mark.parametrize("name", TINY)
def test_forward_backward_every_parameter_gets_gradient(name):
    torch.manual_seed(0)
    model = CLIP(get_model_config(name)).train()
    with torch.no_grad():  # ResNet blocks start with zero bn3 gains, which would block their branch's gradient
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    images, tokens = _inputs(model)
    out = model(images, tokens)
    assert out["image_features"].shape == (2, model.embed_dim)
    assert out["text_features"].shape == (3, model.embed_dim)
    assert torch.allclose(out["image_features"].norm(dim=-1), torch.ones(2), atol=1e-5)
    logits = out["logit_scale"] * out["image_features"] @ out["text_features"].T
    if "logit_bias" in out:
        logits = logits + out["logit_bias"]
    loss = logits.logsumexp(dim=-1).mean() - logits[:, 0].mean()
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"parameters without a finite gradient: {missing}"
    zero = [n for n, p in model.named_parameters() if p.grad.abs().sum() == 0]
    assert not zero, f"parameters with an all-zero gradient: {zero}"


@pytest.mark.parametrize("name", TINY)
def test_grad_checkpointing_gives_same_outputs_and_grads(name):
    torch.manual_seed(0)
    model = CLIP(get_model_config(name)).eval()
    images, tokens = _inputs(model)

    def run():
        model.zero_grad()
        out = model(images, tokens)
        (out["image_features"].sum() + out["text_features"].pow(2).sum()).backward()
        return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    ref_out, ref_grads = run()
    model.set_grad_checkpointing(True)
    ck_out, ck_grads = run()
    for key in ("image_features", "text_features"):
        assert_close_rel(ck_out[key], ref_out[key], rel=1e-5, what=f"{name} {key}")
    for n in ref_grads:  # the recomputed backward sums in another order
        assert_close_rel(ck_grads[n], ref_grads[n], rel=1e-5, what=f"{name} grad {n}")


@pytest.mark.parametrize("name", TINY)
def test_fused_and_plain_attention_agree(name):
    torch.manual_seed(0)
    model = CLIP(get_model_config(name)).eval()
    images, tokens = _inputs(model)
    with torch.no_grad():
        fused = model(images, tokens)
        model.set_fused_attention(False)
        plain = model(images, tokens)
    for key in ("image_features", "text_features"):  # SDPA kernels vs softmax(QK^T)V: other summation orders
        assert_close_rel(fused[key], plain[key], rel=1e-5, what=f"{name} {key}")


def test_text_padding_mask_variant_ignores_padding():
    cfg = get_model_config("tiny-siglip")
    cfg = cfg.replace(text=cfg.text.__class__(**{**cfg.text.__dict__, "pad_mask": True, "pool_type": "first"}))
    torch.manual_seed(0)
    model = CLIP(cfg).eval()
    tokens = torch.zeros(1, 77, dtype=torch.long)
    tokens[0, :4] = torch.tensor([49406, 320, 1929, 49407])
    with torch.no_grad():
        full = model.encode_text(tokens)
        short = model.encode_text(tokens[:, :10])  # padding removed: identical with a padding mask
    assert_close_rel(short, full, rel=1e-5, what="text features without padding")


def test_patch_dropout_only_in_training():
    cfg = get_model_config("tiny-vit")
    cfg = cfg.replace(vision=cfg.vision.__class__(**{**cfg.vision.__dict__, "patch_dropout": 0.5}))
    torch.manual_seed(0)
    model = CLIP(cfg)
    images, _ = _inputs(model)
    model.eval()
    with torch.no_grad():
        a, b = model.encode_image(images), model.encode_image(images)
    torch.testing.assert_close(a, b)
    embedded = model.visual.patch_dropout(model.visual.embed(images))
    model.train()
    dropped = model.visual.patch_dropout(torch.randn(2, 17, 64))
    assert embedded.shape[1] == 17 and dropped.shape[1] == 1 + 8


def _openclip_model(cf_name: str, tmp_path):
    """open_clip's own model for a clipforge architecture name, built from open_clip's config files.

    A Hugging Face text tower is named by hub id in open_clip's config (it would download that config.json):
    the encoder's config clipforge stores is saved to a local folder in `tmp_path` and named instead.
    """
    open_clip = pytest.importorskip("open_clip")
    base = OPENAI_NAMES.get(cf_name, cf_name).removesuffix("-quickgelu")
    cfg = dict(open_clip.get_model_config(base))
    cfg["quick_gelu"] = cf_name.endswith("-quickgelu") or "/" in cf_name or cfg.get("quick_gelu", False)
    hf_config = get_model_config(cf_name).text.hf_config
    if hf_config is not None:
        transformers = pytest.importorskip("transformers")
        fields = {k: v for k, v in hf_config.items() if k != "model_type"}
        transformers.AutoConfig.for_model(hf_config["model_type"], **fields).save_pretrained(tmp_path / "encoder")
        cfg["text_cfg"] = {**cfg["text_cfg"], "hf_model_name": str(tmp_path / "encoder"), "hf_model_pretrained": False}
    custom = cfg.pop("custom_text", False) or hf_config is not None  # open_clip's rule for hf_model_name too
    cls = open_clip.CustomTextCLIP if custom else open_clip.model.CLIP  # EVA02-*: text.*
    with torch.device("meta"):
        return cls(**cfg)


@pytest.mark.parametrize("name", FULL)
def test_full_size_layout_matches_open_clip(name, tmp_path):
    """Built on the meta device: same parameter names (modulo the text prefix) and shapes as open_clip."""
    from clipforge.weights.openclip import openclip_to_clipforge_keys

    with torch.device("meta"):
        ours = CLIP(get_model_config(name))
    theirs = _openclip_model(name, tmp_path)
    their_shapes = {k: tuple(v.shape) for k, v in openclip_to_clipforge_keys(theirs.state_dict()).items()}
    our_shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert our_shapes == their_shapes
    acts = {type(m).__name__ for m in theirs.modules()}
    want_quick = name.endswith("-quickgelu") or "/" in name or name.startswith("roberta-")  # open_clip's roberta
    assert ("QuickGELU" in acts) == want_quick
    plain = "quick_gelu" if want_quick else "gelu"

    def tanh_in(tower):  # timm's GELUTanh or nn.GELU(approximate="tanh"): SigLIP 2's towers, each on its own
        return any(type(m).__name__ == "GELUTanh" or getattr(m, "approximate", None) == "tanh" for m in tower.modules())

    assert ours.config.vision.act == ("gelu_tanh" if tanh_in(theirs.visual) else plain)
    if not ours.config.text.is_hf:  # an HF encoder's activation is its own (hf_config.hidden_act)
        text_tower = theirs.text if hasattr(theirs, "text") else theirs.transformer
        assert ours.config.text.act == ("gelu_tanh" if tanh_in(text_tower) else plain)


def test_unknown_model_name_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"unknown model architecture 'ViT-B-33'.*Did you mean"):
        get_model_config("ViT-B-33")


def test_config_validation_names_the_field():
    with pytest.raises(ConfigError, match="vision.act"):
        CLIPConfig.from_dict({"vision": {"act": "relu"}})
    with pytest.raises(ConfigError, match=r"unknown vision config field\(s\) \['widht'\]"):
        CLIPConfig.from_dict({"vision": {"widht": 10}})
    with pytest.raises(ConfigError, match="patch_size 32 exceeds image_size 16"):
        CLIPConfig.from_dict({"vision": {"image_size": 16, "patch_size": 32}})


def test_config_dict_round_trip():
    for name in ["ViT-B-32", "RN50", "tiny-siglip"]:
        cfg = get_model_config(name)
        assert CLIPConfig.from_dict(cfg.to_dict()) == cfg


def test_sequence_longer_than_context_is_rejected():
    model = CLIP(get_model_config("tiny-vit"))
    with pytest.raises(ValueError, match="exceeds the model's context_length 77"):
        model.encode_text(torch.zeros(1, 78, dtype=torch.long))


@pytest.mark.parametrize("name", ["tiny-vit", "tiny-vit-attnpool"])
def test_text_trimming_after_last_end_token_changes_nothing(name):
    """encode_text skips positions after the batch's last end token; the full-length pass agrees."""
    torch.manual_seed(0)
    model = CLIP(get_model_config(name)).eval()
    _, tokens = _inputs(model)
    with torch.no_grad():
        trimmed = model.text(tokens)
        full = model.text.forward_tokens(tokens)[0]
    assert_close_rel(trimmed, full, rel=1e-5, what=f"{name} trimmed text features")


@pytest.mark.parametrize("final_ln_after_pool", [False, True])
def test_class_token_shortcut_in_last_block_changes_nothing(final_ln_after_pool):
    """encode_image runs the last ViT block for the class token only; the full pass agrees."""
    cfg = get_model_config("tiny-vit")
    cfg = cfg.replace(
        vision=cfg.vision.__class__(**{**cfg.vision.__dict__, "final_ln_after_pool": final_ln_after_pool})
    )
    torch.manual_seed(0)
    model = CLIP(cfg).eval()
    images, _ = _inputs(model)
    with torch.no_grad():
        short = model.visual(images)
        full = model.visual.forward_tokens(images)[0]
    assert_close_rel(short, full, rel=1e-5, what="class-token-only last block")


@pytest.mark.parametrize("name", FULL)
def test_full_size_forward_backward_on_meta_device(name):
    """Full-size towers (up to ViT-bigG) run forward and backward with shapes only: every parameter gets a gradient.

    The meta device propagates shapes without memory or FLOPs, so the whole registry is checked here
    while the numeric forward/backward checks run on the tiny variants above.
    """
    with torch.device("meta"):
        model = CLIP(get_model_config(name)).train()
        size = model.image_size
        images = torch.randn(2, 3, size, size)
        tokens = torch.randint(0, 49408, (3, model.context_length))
        image_features = model.visual(images)  # (2, D)
        if model.config.text.is_hf:  # no padding mask: transformers inspects a mask's values, which meta lacks
            pooled = model.text.transformer(input_ids=tokens).last_hidden_state.mean(dim=1)  # (3, width)
            text_features = model.text.proj(pooled)  # (3, D)
        else:
            text_features = model.text.forward_tokens(tokens)[0]  # (3, D); meta ids cannot drive the trimmed path
        logits = model.logit_scale.exp() * image_features @ text_features.T
        if model.logit_bias is not None:  # SigLIP's learned bias (the named SigLIP configs)
            logits = logits + model.logit_bias
        logits.sum().backward()
    assert image_features.shape == (2, model.embed_dim) and text_features.shape == (3, model.embed_dim)
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"parameters without a gradient: {missing[:5]}"


def test_vit_accepts_a_smaller_image_by_resizing_positions():
    """Reduced-resolution training phases (CLIPA) feed smaller images once they ask for position interpolation;
    the configured size is unchanged."""
    torch.manual_seed(0)
    model = CLIP(get_model_config("tiny-vit")).eval()
    model.set_position_interpolation(True)
    with torch.no_grad():
        small = model.encode_image(torch.randn(2, 3, 16, 16))
        full = model.encode_image(torch.randn(2, 3, 32, 32))
        pos = model.visual._positions(torch.Size([32, 32]))
    assert small.shape == full.shape == (2, model.embed_dim)
    assert pos is model.visual.positional_embedding
