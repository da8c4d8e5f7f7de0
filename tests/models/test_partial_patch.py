"""Image sizes that leave a partial last patch (ViT-SO400M-14-SigLIP-384, nllb-clip-large-siglip: 384 px, 14 px
patches): the grid is floor(image / patch), as timm's and transformers' stride-`patch` convolutions make it, and
the last image_size % patch pixel rows and columns are ignored.

Parity bar: max abs diff <= 1e-4 on L2-normalised fp32 features (issue 11), random weights, on a small tower at
36 px with 8 px patches (a 4 x 4 grid, 4 pixel rows and columns left out).
"""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from clipforge.models import CLIP, CLIPConfig, ConfigError, get_model_config
from support.tolerance import assert_close_rel

TOL = 1e-4
SIDE, PATCH = 36, 8  # 36 = 4 * 8 + 4
SMALL_TEXT = dict(width=32, heads=2, layers=2, vocab_size=1000)


def _small_config():
    base = get_model_config("ViT-SO400M-14-SigLIP-384")
    vision = dataclasses.replace(base.vision, image_size=SIDE, patch_size=PATCH, layers=2, width=64, heads=4)
    return base.replace(embed_dim=64, vision=vision, text=dataclasses.replace(base.text, **SMALL_TEXT))


def _images(n=3, side=SIDE, seed=0):
    return torch.randn(n, 3, side, side, generator=torch.Generator().manual_seed(seed))


def test_named_configs_use_the_floored_27_grid():
    for name in ("ViT-SO400M-14-SigLIP-384", "nllb-clip-large-siglip"):
        v = get_model_config(name).vision
        assert (v.image_size, v.patch_size, v.grid_size) == (384, 14, 27), name
    with torch.device("meta"):
        model = CLIP(get_model_config("ViT-SO400M-14-SigLIP-384"))
        assert tuple(model.visual.positional_embedding.shape) == (27 * 27, 1152)
        tokens = model.visual.embed(torch.empty(1, 3, 384, 384))
    assert tuple(tokens.shape) == (1, 729, 1152)


@pytest.mark.parametrize("name", ["ViT-SO400M-14-SigLIP-384", "nllb-clip-large-siglip"])
def test_named_configs_are_open_clips(name):
    """The registry's JSON is open_clip's config translated (SigLIP's preprocessing for the ViT, as its `webli` tag;
    NLLB-CLIP's encoder fields as stored), and survives a write as open_clip's config."""
    open_clip = pytest.importorskip("open_clip")
    from clipforge.weights.openclip import config_from_openclip, config_to_openclip

    ours = get_model_config(name)
    pre = {"mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bicubic", "resize_mode": "squash"}
    theirs = open_clip.get_model_config(name)
    assert config_from_openclip(theirs, pre if ours.text.hf_config is None else None, ours.text.hf_config) == ours
    written = config_to_openclip(ours)
    assert written["model_cfg"]["vision_cfg"]["timm_model_name"] == "vit_so400m_patch14_siglip_384"
    again = config_from_openclip(written["model_cfg"], written["preprocess_cfg"], written.get("hf_text_config"))
    assert again == ours


def test_pretrained_tags():
    from clipforge.weights.pretrained import find_pretrained

    assert find_pretrained("ViT-SO400M-14-SigLIP-384", "webli").hub_id == "timm/ViT-SO400M-14-SigLIP-384"
    assert find_pretrained("nllb-clip-large-siglip", "v1").hub_id == "visheratin/nllb-clip-large-siglip"
    assert find_pretrained("nllb-clip-large-siglip", "mrl").hub_id == "visheratin/nllb-siglip-mrl-large"


def test_patch_larger_than_image_is_still_refused():
    with pytest.raises(ConfigError, match="patch_size 32 exceeds image_size 16"):
        CLIPConfig.from_dict({"vision": {"image_size": 16, "patch_size": 32}})


def test_the_ignored_border_does_not_change_the_embedding():
    """Pixels beyond the last whole patch (rows/columns 32..35) take no part, as in the reference."""
    torch.manual_seed(0)
    model = CLIP(_small_config()).eval()
    images = _images()
    changed = images.clone()
    changed[..., 32:, :] = 5.0
    changed[..., :, 32:] = -5.0
    inside = images.clone()
    inside[..., 31, 0] += 1.0  # the last whole patch does count
    with torch.no_grad():
        ref, border, moved = (model.encode_image(x) for x in (images, changed, inside))
    assert_close_rel(border, ref, rel=1e-5)
    assert (moved - ref).abs().max() > 1e-3


def test_size_checks_and_position_interpolation():
    torch.manual_seed(0)
    model = CLIP(_small_config()).eval()
    with pytest.raises(ValueError, match="images are 32x32 but this model takes 36x36"):
        model.encode_image(_images(1, 32))
    model.set_position_interpolation(True)
    with torch.no_grad():
        images = _images(2)
        own = model.encode_image(images)  # its own (non-multiple) size stays accepted
        assert model.encode_image(_images(2, 48)).shape == own.shape  # 6 x 6 grid: positions resampled
        # the 32 px crop is the same 4 x 4 grid of the same pixels: the same embedding
        assert_close_rel(model.encode_image(images[..., :32, :32].contiguous()), own, rel=1e-5)
        with pytest.raises(ValueError, match="images are 44x44, not a multiple of the patch size 8"):
            model.encode_image(_images(1, 44))


def _small_openclip(monkeypatch):
    """open_clip's ViT-SO400M-14-SigLIP-384 with its timm tower shrunk to 2 blocks of width 64 at 36 px, patch 8."""
    open_clip = pytest.importorskip("open_clip")
    timm = pytest.importorskip("timm")
    create = timm.create_model
    trunk = dict(img_size=SIDE, patch_size=PATCH, depth=2, embed_dim=64, num_heads=4)
    monkeypatch.setattr(timm, "create_model", lambda name, **kw: create(name, **{**kw, **trunk}))
    cfg = dict(open_clip.get_model_config("ViT-SO400M-14-SigLIP-384"))
    cfg.pop("custom_text")
    cfg.update(embed_dim=64, text_cfg={**cfg["text_cfg"], **SMALL_TEXT})
    torch.manual_seed(1)
    model = open_clip.CustomTextCLIP(**cfg).eval()
    with torch.no_grad():  # timm zero-inits biases and the latent's scale is small: randomise all for a real test
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model


def test_small_partial_patch_siglip_matches_open_clip(monkeypatch):
    from clipforge.weights.openclip import clipforge_to_openclip_keys, openclip_to_clipforge_keys

    theirs = _small_openclip(monkeypatch)
    assert tuple(theirs.visual.trunk.pos_embed.shape) == (1, 16, 64)  # timm floors 36 / 8 to a 4 x 4 grid
    ours = CLIP(_small_config()).eval()
    ours.load_state_dict(openclip_to_clipforge_keys(theirs.state_dict()), strict=True)
    images = _images()
    with torch.no_grad():
        ref, got = theirs.encode_image(images, normalize=True), ours.encode_image(images, normalize=True)
    diff = (got - ref).abs().max().item()
    print(f"open_clip/timm partial-patch parity (36 px, patch 8): max abs diff {diff:.2e}")
    assert diff <= TOL, f"max abs diff {diff:.2e}"
    back = clipforge_to_openclip_keys(ours.state_dict(), custom_text=True)
    assert sorted(back) == sorted(theirs.state_dict())


def test_small_partial_patch_matches_transformers_siglip(tmp_path):
    """transformers' SiglipModel floors too (num_patches = (36 // 8) ** 2): read its folder, write one back."""
    import clipforge
    from clipforge.weights.hf_siglip import write_hf_siglip_dir

    transformers = pytest.importorskip("transformers")
    text = dict(vocab_size=300, hidden_size=48, intermediate_size=176, num_hidden_layers=2, num_attention_heads=3,
                max_position_embeddings=16, projection_size=64, pad_token_id=1, eos_token_id=2)  # fmt: skip
    vision = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, image_size=SIDE,
                  patch_size=PATCH)  # fmt: skip
    torch.manual_seed(0)
    ref = transformers.SiglipModel(transformers.SiglipConfig(text_config=text, vision_config=vision))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    ref.eval().save_pretrained(tmp_path / "hf")
    model = clipforge.load_model(str(tmp_path / "hf")).eval()
    assert (model.config.vision.image_size, model.config.vision.grid_size) == (SIDE, 4)
    images = _images()
    with torch.no_grad():
        theirs = ref.get_image_features(pixel_values=images)
        theirs = F.normalize(getattr(theirs, "pooler_output", theirs), dim=-1)
        ours = model.encode_image(images, normalize=True)
    diff = (ours - theirs).abs().max().item()
    print(f"transformers SiglipModel partial-patch parity (36 px, patch 8): max abs diff {diff:.2e}")
    assert diff <= TOL
    out = write_hf_siglip_dir(model, tmp_path / "back")
    again = transformers.SiglipModel.from_pretrained(out).eval()
    with torch.no_grad():
        back = again.get_image_features(pixel_values=images)
        back = F.normalize(getattr(back, "pooler_output", back), dim=-1)
    assert (back - theirs).abs().max().item() <= TOL


def test_training_backward_checkpointing_and_compile():
    torch.manual_seed(0)
    model = CLIP(_small_config()).train()
    images = _images(2)

    def grads():
        model.zero_grad()
        model.encode_image(images).pow(2).sum().backward()
        return {n: p.grad.clone() for n, p in model.visual.named_parameters()}

    ref = grads()
    assert [n for n, g in ref.items() if g.abs().sum() == 0] == []
    model.set_grad_checkpointing(True)
    ck = grads()
    for name, g in ref.items():
        assert_close_rel(ck[name], g, rel=1e-4, what=name)
    model.set_grad_checkpointing(False)
    model.eval()
    with torch.no_grad():
        eager = model.encode_image(images)
        compiled = torch.compile(model.encode_image, backend="aot_eager")(images)
    assert_close_rel(compiled, eager, rel=1e-4)
