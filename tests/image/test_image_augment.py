"""Train transform: shapes, determinism given a generator, and the statistics of its random choices."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from clipforge.image import AugmentConfig, EvalTransform, TrainTransform, build_transform
from clipforge.image.augment import color_jitter, random_resized_crop_box, shift_hue
from clipforge.models.config import ConfigError, PreprocessConfig

CFG = PreprocessConfig(size=32)


def _unnormalize(x: torch.Tensor, cfg: PreprocessConfig = CFG) -> torch.Tensor:
    """(3, H, W) normalised -> [0, 1] pixel values."""
    return x * torch.tensor(cfg.std).view(3, 1, 1) + torch.tensor(cfg.mean).view(3, 1, 1)


def test_shape_dtype_and_any_mode_input(photos):
    transform = build_transform(PreprocessConfig(size=48), train=True, generator=torch.Generator().manual_seed(0))
    assert isinstance(transform, TrainTransform)
    for image in (photos["chelsea"], photos["camera"], Image.new("RGBA", (40, 90))):
        out = transform(image)
        assert out.shape == (3, 48, 48) and out.dtype == torch.float32


def test_deterministic_given_the_generator(photos):
    options = {"color_jitter": (0.4, 0.4, 0.4, 0.1), "grayscale_prob": 0.5}

    def run(seed: int) -> list[torch.Tensor]:
        transform = build_transform(CFG, train=True, generator=torch.Generator().manual_seed(seed), **options)
        return [transform(photos["coffee"]) for _ in range(6)]

    first, again, other = run(3), run(3), run(4)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))
    assert not torch.equal(first[0], first[1])  # successive calls draw new crops


@pytest.mark.parametrize("width, height", [(400, 400), (400, 300)])
def test_crop_box_statistics(width, height):
    gen = torch.Generator().manual_seed(0)
    boxes = np.array([random_resized_crop_box(width, height, (0.9, 1.0), (3 / 4, 4 / 3), gen) for _ in range(3000)])
    left, top, w, h = boxes.T
    assert (left >= 0).all() and (top >= 0).all() and (left + w <= width).all() and (top + h <= height).all()
    area = w * h / (width * height)
    # Rounding each side moves the area by at most about (w + h) / 2 pixels: 0.3% here.
    assert area.min() >= 0.9 - 0.003 and area.max() <= 1.0
    aspect = w / h
    assert aspect.min() >= 3 / 4 - 0.01 and aspect.max() <= 4 / 3 + 0.01
    # Crops that do not fit inside the image are redrawn, so accepted areas are not uniform; they stay spread.
    assert 0.93 < area.mean() < 0.97 and area.std() > 0.02
    assert len({tuple(box) for box in boxes}) > 1000


@pytest.mark.parametrize(
    "width, height, box",
    [
        (1000, 10, (493, 0, 13, 10)),  # a strip: centred crop clamped to aspect 4/3
        (451, 300, (25, 0, 400, 300)),  # aspect 1.5: no 4/3 crop holds 90% of it, so always the centred 400x300
        (300, 451, (0, 25, 300, 400)),
    ],
)
def test_crop_box_falls_back_to_a_centred_crop(width, height, box):
    # torchvision's (and so open_clip's) behaviour: after ten misses, the largest centred crop within `ratio`.
    gen = torch.Generator().manual_seed(0)
    assert {random_resized_crop_box(width, height, (0.9, 1.0), (3 / 4, 4 / 3), gen) for _ in range(20)} == {box}


def test_crop_box_honours_a_small_scale():
    gen = torch.Generator().manual_seed(1)
    areas = [math.prod(random_resized_crop_box(400, 400, (0.08, 0.1), (1.0, 1.0), gen)[2:]) for _ in range(200)]
    assert all(0.08 * 160_000 * 0.98 <= a <= 0.1 * 160_000 * 1.02 for a in areas)


def test_grayscale_probability(photos):
    def grey_fraction(p: float, n: int = 200) -> float:
        transform = TrainTransform(CFG, AugmentConfig(grayscale_prob=p), generator=torch.Generator().manual_seed(0))
        small = photos["astronaut"].resize((40, 40))
        pixels = [_unnormalize(transform(small)) for _ in range(n)]  # each (3, 32, 32)
        grey = [torch.allclose(x[0], x[1], atol=1e-5) and torch.allclose(x[1], x[2], atol=1e-5) for x in pixels]
        return float(np.mean(grey))

    assert grey_fraction(1.0) == 1.0
    assert grey_fraction(0.0) == 0.0
    assert 0.35 < grey_fraction(0.5) < 0.65  # binomial, n=200: 4 standard deviations either side


def test_colour_jitter_known_answers():
    gen = torch.Generator().manual_seed(0)
    red = Image.new("RGB", (4, 4), (255, 0, 0))
    assert np.array_equal(np.asarray(color_jitter(red, (0.0, 0.0, 0.0, 0.0), gen)), np.asarray(red))
    r, g, b = np.asarray(shift_hue(red, 0.5))[0, 0].tolist()
    assert r == 0 and g == 255 and b > 240  # half a turn from red: cyan
    grey = Image.new("RGB", (4, 4), (100, 100, 100))
    darker = [np.asarray(color_jitter(grey, (0.5, 0.0, 0.0, 0.0), gen))[0, 0, 0] for _ in range(50)]
    assert min(darker) >= 50 and max(darker) <= 150 and min(darker) < 90 and max(darker) > 110


def test_whole_image_crop_equals_eval_squash(photos):
    # scale and ratio pinned to 1 on a square photo: the only crop is the whole image, so no randomness is left.
    cfg = PreprocessConfig(size=64, resize_mode="squash")
    aug = AugmentConfig(scale=(1.0, 1.0), ratio=(1.0, 1.0))
    transform = TrainTransform(cfg, aug, generator=torch.Generator().manual_seed(0))
    assert torch.equal(transform(photos["astronaut"]), EvalTransform(cfg)(photos["astronaut"]))


def test_options_are_validated():
    with pytest.raises(ConfigError, match="valid options"):
        build_transform(CFG, train=True, scales=(0.5, 1.0))
    with pytest.raises(ValueError, match="train=False"):
        build_transform(CFG, grayscale_prob=0.2)
    with pytest.raises(ConfigError, match="scale"):
        AugmentConfig(scale=(0.0, 1.0))
    with pytest.raises(ConfigError, match="color_jitter"):
        AugmentConfig(color_jitter=(0.4, 0.4, 0.4, 0.6))
    with pytest.raises(ConfigError, match="grayscale_prob"):
        AugmentConfig(grayscale_prob=1.5)
