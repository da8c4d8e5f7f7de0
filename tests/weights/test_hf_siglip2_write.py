"""Writing transformers `Siglip2Model` folders (weights/hf_siglip2.py `write_hf_siglip2_dir`, `save_model(...,
format="hf")` for SigLIP 2): transformers loads them and computes clipforge's features; clipforge reads them back
exactly; Siglip2ImageProcessor built from the written preprocessor_config.json gives the model's fixed grid.

Random weights on tiny-siglip2 (32 px, 8 px patches: a 4 x 4 grid); transformers gets the inputs its processor
builds for a square image at the native size (flattened (row, col, channel) patches, every patch valid,
spatial_shapes = (4, 4)). Bar: max abs diff <= 1e-4 on L2-normalised fp32 features (issue 11).
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

transformers = pytest.importorskip("transformers")
siglip2_processing = pytest.importorskip("transformers.models.siglip2.image_processing_siglip2")

import clipforge  # noqa: E402
from clipforge.models import CLIP, ConfigError, get_model_config  # noqa: E402
from clipforge.weights import hf_siglip2  # noqa: E402

TOL = 1e-4
PATCH, GRID = 8, 4
SIDE = PATCH * GRID


def _model(config=None, seed: int = 0) -> CLIP:
    torch.manual_seed(seed)
    model = CLIP(config or get_model_config("tiny-siglip2")).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # off every init (zero biases, unit norms) so that a swapped key cannot go unnoticed
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return model


def _inputs(vocab: int = 700):
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(3, 3, SIDE, SIDE, generator=gen)
    tokens = torch.randint(5, vocab, (4, 64), generator=gen)
    tokens[:, 20:] = 0  # right-padded with <pad>, as the Gemma tokenizer pads; the pooled last position is padding
    return images, tokens


def _hf_features(hf_model, images, tokens):
    patches = torch.stack([siglip2_processing.convert_image_to_patches(img, PATCH) for img in images])  # (B, 16, 192)
    n = len(images)
    with torch.no_grad():
        out = hf_model(
            input_ids=tokens,
            pixel_values=patches,
            pixel_attention_mask=torch.ones(n, GRID * GRID, dtype=torch.int32),
            spatial_shapes=torch.tensor([[GRID, GRID]] * n),
        )
    return out.image_embeds, out.text_embeds, out.logits_per_image  # embeds: L2-normalised


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    model = _model()
    folder = hf_siglip2.write_hf_siglip2_dir(model, tmp_path_factory.mktemp("siglip2_out"))
    return model, folder


def test_transformers_loads_the_folder_with_clipforges_features(written):
    model, folder = written
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "siglip2" and config["vision_config"]["num_patches"] == GRID * GRID
    assert "image_size" not in config["vision_config"]
    hf_model = transformers.Siglip2Model.from_pretrained(folder).eval()
    images, tokens = _inputs()
    ref_i, ref_t, ref_logits = _hf_features(hf_model, images, tokens)
    with torch.no_grad():
        got_i, got_t = model.encode_image(images, normalize=True), model.encode_text(tokens, normalize=True)
        out = model(images, tokens)
    logits = out["logit_scale"] * out["image_features"] @ out["text_features"].T + out["logit_bias"]
    di, dt = (got_i - ref_i).abs().max().item(), (got_t - ref_t).abs().max().item()
    print(f"Siglip2Model written by clipforge: max abs diff image {di:.2e} text {dt:.2e}")
    assert di <= TOL and dt <= TOL, f"max abs diff image {di:.2e} text {dt:.2e}"
    assert (logits - ref_logits).abs().max().item() <= 1e-3 * ref_logits.abs().max().item()


def test_clipforge_reads_its_folder_back_exactly(written):
    model, folder = written
    loaded = clipforge.load_model(folder)
    assert loaded.config.vision == model.config.vision
    # the folder's text cleaning is transformers' Siglip2Tokenizer's, whatever the model's was (hf_siglip2 docstring)
    assert loaded.config.text.tokenizer_clean == "lowercase_only"
    text = dataclasses.replace(loaded.config.text, hf_tokenizer_name=None, tokenizer_clean="whitespace")
    assert text == model.config.text
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert loaded.config.preprocess == model.config.preprocess  # mean / std / interpolation, squash


def test_patch_kernel_round_trips():
    weight = torch.randn(64, 3, PATCH, PATCH)
    linear = hf_siglip2.conv_patch_to_linear(weight)  # (64, 8*8*3), (row, col, channel)
    image = torch.randn(3, PATCH, PATCH)
    flat = siglip2_processing.convert_image_to_patches(image, PATCH)[0]  # (192,)
    torch.testing.assert_close(linear @ flat, (weight * image).sum(dim=(1, 2, 3)), rtol=1e-5, atol=1e-5)
    assert torch.equal(hf_siglip2.linear_patch_to_conv(linear, PATCH), weight)


def test_image_processor_gives_the_fixed_grid(written):
    _, folder = written
    pytest.importorskip("torchvision")  # transformers' Siglip2ImageProcessor backend (the test shim provides it)
    from PIL import Image

    processor = transformers.AutoImageProcessor.from_pretrained(folder)
    assert type(processor).__name__.startswith("Siglip2ImageProcessor")
    assert (processor.max_num_patches, processor.patch_size) == (GRID * GRID, PATCH)
    image = Image.new("RGB", (3 * SIDE, 3 * SIDE), (200, 30, 90))  # square: resized to the model's side
    out = processor(images=image, return_tensors="pt")
    assert out["spatial_shapes"].tolist() == [[GRID, GRID]]
    assert bool(out["pixel_attention_mask"].all()) and out["pixel_values"].shape == (1, GRID * GRID, PATCH * PATCH * 3)
    expected = (torch.tensor([200, 30, 90]) / 255 - 0.5) / 0.5  # a flat colour: exact after resizing
    torch.testing.assert_close(out["pixel_values"][0, 0, :3], expected.float(), rtol=0, atol=1e-2)


def test_save_model_hf_writes_siglip2_for_the_gemma_vocabulary(tmp_path):
    base = get_model_config("tiny-siglip2")
    gemma = base.replace(text=dataclasses.replace(base.text, vocab_size=hf_siglip2.GEMMA_VOCAB_SIZE, width=16,
                                                  heads=1))
    folder = clipforge.save_model(_model(gemma), tmp_path / "gemma", format="hf")
    assert json.loads((folder / "config.json").read_text())["model_type"] == "siglip2"
    assert (folder / "preprocessor_config.json").is_file()
    other = clipforge.save_model(_model(), tmp_path / "siglip", format="hf")  # 49408 ids: SigLIP's SiglipModel
    assert json.loads((other / "config.json").read_text())["model_type"] == "siglip"


def test_what_siglip2_cannot_express_is_refused_before_writing(tmp_path):
    with pytest.raises(ConfigError, match="Siglip2Model cannot express.*class token"):
        hf_siglip2.write_hf_siglip2_dir(CLIP(get_model_config("tiny-vit")), tmp_path / "clip")
    base = get_model_config("tiny-siglip2")
    causal = base.replace(text=dataclasses.replace(base.text, causal_mask=True))
    with pytest.raises(ConfigError, match="Siglip2Model cannot express.*causal"):
        hf_siglip2.write_hf_siglip2_dir(CLIP(causal), tmp_path / "odd")
    # A tower that floors its patch grid (timm's So400m/14 at 384 px): built here past VisionConfig's own checks.
    floored = dataclasses.replace(base.vision)
    object.__setattr__(floored, "image_size", 36)  # 4 x 4 patches of 8 px, the last 4 pixel rows ignored
    with pytest.raises(ConfigError, match="36 is not a whole number of 8-pixel patches"):
        hf_siglip2.config_to_hf_siglip2(_with_vision(base, floored))
    assert not (tmp_path / "clip").exists() and not (tmp_path / "odd").exists()


def _with_vision(config, vision):
    """`config` with `vision` swapped in without re-validation (frozen dataclass)."""
    out = dataclasses.replace(config)
    object.__setattr__(out, "vision", vision)
    return out
