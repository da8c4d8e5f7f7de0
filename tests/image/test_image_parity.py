"""Parity of clipforge's EvalTransform with open_clip 3.3.0's image_transform(..., is_train=False).

Tolerance: max abs difference <= 1e-6 on the normalised float32 output (measured: 0.0 in every case, the same
float32 operations in the same order). Inputs are real photos from scikit-image at their own sizes and as crops
that force upscaling, odd sizes, portrait and extreme aspect ratios; RGB and grey ("L") images, and RGBA only
when fully opaque (with transparency the two libraries deliberately differ: see the last test).
"""

import ast
import sys
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode

import clipforge.image
from clipforge.image import EvalTransform, build_transform
from clipforge.models.config import PreprocessConfig

ATOL = 1e-6


@pytest.fixture(autouse=True)
def _one_torch_thread():
    # open_clip's reference does small per-image torch ops; on a busy machine intra-op threads only contend.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# (left, top, right, bottom) crops of a photo: small (upscaled about 6 times), odd-sized near-square, portrait,
# very wide (7.4:1), very tall (9.7:1).
CROPS = {
    "small": (10, 20, 47, 81),
    "odd": (3, 5, 226, 230),
    "portrait": (40, 0, 190, 299),
    "wide": (0, 100, 371, 150),
    "tall": (100, 0, 131, 300),
}


def _inputs(photos: dict[str, Image.Image]) -> dict[str, Image.Image]:
    cases = dict(photos)
    for name in ("chelsea", "camera"):
        for crop_name, box in CROPS.items():
            cases[f"{name}/{crop_name}"] = photos[name].crop(box)
    astronaut = np.asarray(photos["astronaut"])
    opaque = np.concatenate([astronaut, np.full(astronaut.shape[:2] + (1,), 255, np.uint8)], axis=-1)
    cases["astronaut/RGBA-opaque"] = Image.fromarray(opaque)
    return cases


def _reference(cfg: PreprocessConfig, interpolation: str | None = None):
    return open_clip.image_transform(
        cfg.size,
        is_train=False,
        mean=cfg.mean,
        std=cfg.std,
        resize_mode=cfg.resize_mode,
        interpolation=interpolation or cfg.interpolation,
        fill_color=cfg.fill_color,
    )


def _max_diffs(ours, reference, inputs: dict[str, Image.Image], size: int) -> dict[str, float]:
    diffs = {}
    for name, image in inputs.items():
        got, want = ours(image), reference(image)
        assert got.shape == want.shape == (3, size, size), name
        assert got.dtype == torch.float32
        diffs[name] = (got - want).abs().max().item()
    return diffs


@pytest.mark.parametrize("size", [224, 336])
@pytest.mark.parametrize("resize_mode", ["shortest", "longest", "squash"])
@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_eval_transform_matches_open_clip(photos, size, resize_mode, interpolation):
    cfg = PreprocessConfig(size=size, resize_mode=resize_mode, interpolation=interpolation, fill_color=0)
    diffs = _max_diffs(EvalTransform(cfg), _reference(cfg), _inputs(photos), size)
    worst = max(diffs, key=diffs.get)
    assert diffs[worst] <= ATOL, f"{worst}: max abs diff {diffs[worst]} (all: {diffs})"


@pytest.mark.parametrize("fill_color", [127, 255])
def test_longest_padding_colour_matches_open_clip(photos, fill_color):
    cfg = PreprocessConfig(size=224, resize_mode="longest", fill_color=fill_color, mean=(0.5,) * 3, std=(0.5,) * 3)
    inputs = {name: image for name, image in _inputs(photos).items() if "/" in name}  # crops: all need padding
    diffs = _max_diffs(EvalTransform(cfg), _reference(cfg), inputs, 224)
    assert max(diffs.values()) <= ATOL, diffs


@pytest.mark.parametrize("resize_mode", ["shortest", "longest", "squash"])
def test_nearest_matches_torchvision_nearest_on_open_clip_geometry(photos, resize_mode):
    # open_clip rejects "nearest"; clipforge's is torchvision's NEAREST on open_clip's sizes and offsets.
    cfg = PreprocessConfig(size=224, resize_mode=resize_mode, interpolation="nearest")
    reference = _reference(cfg, interpolation="bilinear")
    for step in reference.transforms:
        if hasattr(step, "interpolation"):
            step.interpolation = InterpolationMode.NEAREST
    diffs = _max_diffs(EvalTransform(cfg), reference, _inputs(photos), 224)
    assert max(diffs.values()) <= ATOL, diffs


def test_build_transform_eval_is_eval_transform(photos):
    cfg = PreprocessConfig(size=224)
    transform = build_transform(cfg)
    assert isinstance(transform, EvalTransform)
    image = photos["coffee"]
    assert (transform(image) - _reference(cfg)(image)).abs().max().item() <= ATOL


def test_transparent_rgba_is_composited_on_white_unlike_open_clip(transparent_photo, composite_over):
    # open_clip resizes RGBA (premultiplied) and drops alpha; clipforge composites over white first, so its
    # output equals open_clip's on the image a viewer sees: the photo flattened onto white.
    cfg = PreprocessConfig(size=224)
    flattened = Image.fromarray(composite_over(np.asarray(transparent_photo), (255, 255, 255)))
    ours, reference = EvalTransform(cfg), _reference(cfg)
    assert (ours(transparent_photo) - reference(flattened)).abs().max().item() <= ATOL
    assert (reference(transparent_photo) - reference(flattened)).abs().max().item() > 1.0  # the documented difference


def test_image_package_imports_only_pillow_numpy_torch():
    # torchvision must stay out of the library (its PyPI wheel does not even import beside the CPU torch).
    # Checked on the source, since this process has torchvision loaded for the reference.
    allowed = {"PIL", "numpy", "torch", "clipforge"} | set(sys.stdlib_module_names)
    for path in sorted(Path(clipforge.image.__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                roots = {node.module.split(".")[0]}
            else:
                continue
            assert roots <= allowed, f"{path.name} imports {sorted(roots - allowed)}"
