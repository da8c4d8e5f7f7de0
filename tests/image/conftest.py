"""Real photos for the image tests: the scikit-image samples that ship inside its wheel (no download).

`pip install scikit-image` (a test extra in pyproject.toml) provides them; names that need pooch and a network
(eagle, brain, kidney, lily, skin) are not used.
"""

import numpy as np
import pytest
from PIL import Image

skimage_data = pytest.importorskip("skimage.data", reason="pip install scikit-image (the test extra) provides photos")

# Squares (astronaut 512, camera 512 grey), landscapes (coffee 600x400, chelsea 451x300, rocket 640x427,
# page 384x191 grey) and an odd-sized near-square (colorwheel 371x370); portrait cases are crops of these.
PHOTO_NAMES = ("astronaut", "coffee", "chelsea", "rocket", "camera", "page", "colorwheel")


@pytest.fixture(scope="session")
def photos() -> dict[str, Image.Image]:
    """Each photo as a PIL image: RGB for the colour ones, L for camera and page."""
    return {name: Image.fromarray(getattr(skimage_data, name)()) for name in PHOTO_NAMES}


@pytest.fixture(scope="session")
def transparent_photo(photos) -> Image.Image:
    """The astronaut (512x512) as RGBA: alpha ramps 0..255 left to right, colour under alpha 0 is zeroed.

    scikit-image ships no photo with transparency (its "logo" is fully opaque), so the alpha is made here;
    black under transparent pixels is what many exporters write and what a naive convert("RGB") shows.
    """
    rgb = np.asarray(photos["astronaut"]).copy()  # (512, 512, 3)
    alpha = np.broadcast_to(np.linspace(0, 255, rgb.shape[1]).round().astype(np.uint8), rgb.shape[:2])
    rgb[alpha == 0] = 0
    return Image.fromarray(np.dstack([rgb, alpha]))


@pytest.fixture(scope="session")
def composite_over():
    """Reference alpha compositing in float64: round((c * a + bg * (255 - a)) / 255), (H, W, 4) -> (H, W, 3)."""
    return _composite_over


def _composite_over(rgba: np.ndarray, background: tuple[int, int, int]) -> np.ndarray:
    colour = rgba[..., :3].astype(np.float64)
    alpha = rgba[..., 3:].astype(np.float64)
    out = (colour * alpha + np.asarray(background, np.float64) * (255.0 - alpha)) / 255.0
    return np.round(out).astype(np.uint8)
