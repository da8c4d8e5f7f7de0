"""One image, end to end, through clipforge and through each exported format's own library: the same embedding.

issue 8 A: the quickstart model (28 px, patch 7) was preprocessed at 32 px by clipforge and at 28 px by open_clip,
and the same image embedded with cosine 0.956 between the two. Here clipforge's `get_preprocess(model)` + model
is compared with what a user of the export would run, each library preprocessing the image itself:
  (a) open_clip: `create_model_from_pretrained("local-dir:<openclip export>")` and the transform it returns;
  (b) transformers: `CLIPModel.from_pretrained(<hf export>)` and `CLIPProcessor.from_pretrained(<hf export>)`.
Models: the quickstart's 28 px / patch 7 with non-default normalisation and bilinear resizing (every
preprocessing field has to travel), and a tiny ViT at the standard 224 px with CLIP's defaults; ViT-B-32 itself
runs as a slow test.

The image is 336x256, resized (shortest side) then centre-cropped. transformers crops at int((side - size) / 2),
clipforge and open_clip at round((side - size) / 2): they differ by one pixel when side - size is 3 mod 4, a real
difference of the libraries, not of the export. At 336x256 the resized long side is 36 (for 28 px) and 294 (for
224 px): side - size is 8 and 70, so every library crops the same pixels (`_crops_agree` checks it).

Tolerances, on L2-normalised float32 features (scale 1): open_clip and transformers' PIL image processor resize
with the same Pillow call as clipforge, so the pixels agree to float rounding and the features to ~1e-7
(measured 1.3e-7 max); the bar is 1e-5, what float32 guarantees for differently ordered sums over these widths,
and a one-pixel shift or a wrong size, mean or filter moves features by 1e-2 or more. transformers' default
image processor resizes uint8 tensors with torch's antialiased kernels (some pixels one grey level or a few
off, tests/weights/test_hf_export.py): measured 7.7e-5 max at 224 px, bounded at 1e-3 with cosine >= 0.9999.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import clipforge
from clipforge.image.transforms import resized_size
from clipforge.weights import hf_processor
from clipforge.weights.openclip import CONFIG_NAME as OPENCLIP_CONFIG

open_clip = pytest.importorskip("open_clip")
transformers = pytest.importorskip("transformers")

SAME_PIXELS = 1e-5  # unit-norm features from identical pixels (see the module docstring)
TORCH_RESIZE = 1e-3  # transformers' torch-kernel resize: a few grey levels on some pixels
QUICKSTART = {
    "vision": {"image_size": 28, "patch_size": 7},
    "preprocess": {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3], "interpolation": "bilinear"},
}
STANDARD = {"vision": {"image_size": 224, "patch_size": 32}}
CASES = [
    pytest.param("tiny-vit", QUICKSTART, id="quickstart-28px"),
    pytest.param("tiny-vit", STANDARD, id="standard-224px"),
    pytest.param("ViT-B-32", {}, id="ViT-B-32", marks=pytest.mark.slow),
]


def _image(width: int = 336, height: int = 256, seed: int = 0) -> Image.Image:
    """Smooth gradients, a sinusoid and noise: structure that survives resizing, detail that shows a shifted
    crop or another filter."""
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([255 * x / width, 255 * y / height, 128 + 100 * np.sin(x / 3.0 + y / 5.0)], axis=-1)
    noise = np.random.default_rng(seed).normal(0, 30, base.shape)
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8), "RGB")


def _crops_agree(image: Image.Image, size: int) -> bool:
    """Whether transformers' int() crop offsets equal clipforge's / open_clip's round() ones for this image."""
    width, height = resized_size(image.width, image.height, size, "shortest")
    return all((side - size) // 2 == round((side - size) / 2) for side in (width, height))


def _model(name: str, overrides: dict) -> clipforge.CLIP:
    """Random weights moved off their initialisation, so every parameter shapes the embedding."""
    torch.manual_seed(0)
    model = clipforge.create_model(name, **overrides)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return model.eval()


def _clipforge_embedding(model: clipforge.CLIP, image: Image.Image) -> torch.Tensor:
    with torch.no_grad():
        return model.encode_image(clipforge.get_preprocess(model)(image).unsqueeze(0), normalize=True)[0]  # (D,)


def _assert_same(got: torch.Tensor, ref: torch.Tensor, bound: float, what: str) -> None:
    cosine = F.cosine_similarity(got, ref, dim=0).item()
    diff = (got - ref).abs().max().item()  # unit-norm vectors: the scale is 1
    assert cosine >= 0.9999 and diff <= bound, f"{what}: cosine {cosine:.6f}, max diff {diff:.2e} (bound {bound})"


@pytest.fixture(scope="module")
def image() -> Image.Image:
    return _image()


@pytest.mark.parametrize(("name", "overrides"), CASES)
def test_open_clip_embeds_the_export_like_clipforge(tmp_path, image, name, overrides):
    model = _model(name, overrides)
    assert model.config.preprocess.size == model.image_size
    clipforge.save_model(model, tmp_path, format="openclip")
    theirs, preprocess = open_clip.create_model_from_pretrained(f"local-dir:{tmp_path}")
    pixels = preprocess(image).unsqueeze(0)  # open_clip's own transform, from the export's preprocess_cfg
    assert pixels.shape[-2:] == (model.image_size, model.image_size)
    with torch.no_grad():
        got = theirs.eval().encode_image(pixels, normalize=True)[0]
    _assert_same(got, _clipforge_embedding(model, image), SAME_PIXELS, f"open_clip {name}")


@pytest.mark.parametrize(("name", "overrides"), CASES)
def test_transformers_embeds_the_export_like_clipforge(tmp_path, image, name, overrides):
    model = _model(name, overrides)
    assert _crops_agree(image, model.image_size), "pick an image whose crop offsets agree (module docstring)"
    clipforge.save_model(model, tmp_path, format="hf")
    theirs = transformers.CLIPModel.from_pretrained(tmp_path).eval()
    ref = _clipforge_embedding(model, image)
    for backend, bound in (("pil", SAME_PIXELS), (None, TORCH_RESIZE)):  # None: transformers' default processor
        processor = transformers.CLIPProcessor.from_pretrained(tmp_path, **({"backend": backend} if backend else {}))
        pixels = processor(images=image, return_tensors="pt")["pixel_values"]
        assert pixels.shape[-2:] == (model.image_size, model.image_size)
        with torch.no_grad():
            out = theirs.get_image_features(pixel_values=pixels)
        got = F.normalize(out if torch.is_tensor(out) else out.pooler_output, dim=-1)[0]
        _assert_same(got, ref, bound, f"transformers ({backend or 'default'} processor) {name}")


def test_the_exports_state_the_models_input_size(tmp_path):
    """Both exports write the size the model takes, with the preprocessing that goes with it."""
    model = _model("tiny-vit", QUICKSTART)
    clipforge.save_model(model, tmp_path / "openclip", format="openclip")
    clipforge.save_model(model, tmp_path / "hf", format="hf")
    pre = json.loads((tmp_path / "openclip" / OPENCLIP_CONFIG).read_text())["preprocess_cfg"]
    assert pre == {
        "size": 28,
        "mean": [0.5, 0.4, 0.3],
        "std": [0.2, 0.25, 0.3],
        "interpolation": "bilinear",
        "resize_mode": "shortest",
        "fill_color": 0,
    }
    hf = json.loads((tmp_path / "hf" / hf_processor.PREPROCESSOR_NAME).read_text())
    assert hf["size"] == {"shortest_edge": 28} and hf["crop_size"] == {"height": 28, "width": 28}
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["vision_config"]["image_size"] == 28
    for folder in ("openclip", "hf"):  # and clipforge reads both back at that size
        assert clipforge.load_model(tmp_path / folder).config.preprocess == model.config.preprocess
