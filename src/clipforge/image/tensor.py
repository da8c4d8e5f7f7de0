"""From an RGB PIL image to the normalised float tensor a CLIP model takes; shared by eval and train transforms.

An 8-bit channel has only 256 values, so the normalised value of each is computed once, with exactly
torchvision's `to_tensor` then `Normalize` operations (uint8 -> float32, divide by 255, subtract the mean, divide
by the std, all float32 torch ops), into a (3, 256) table; an image is then a table lookup. The result is
bit-identical to open_clip's preprocessing, which is built from those two transforms, and needs no torch
threads: on a busy machine torch's intra-op threads made the per-image arithmetic 30x slower than the lookup.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from clipforge.models.config import Interpolation

# The Pillow filter for each PreprocessConfig.interpolation (torchvision maps its modes to the same filters).
RESAMPLE: dict[Interpolation, Image.Resampling] = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
}


class Normalizer:
    """Turns an 8-bit RGB PIL image into a float32 tensor (3, H, W), (x / 255 - mean) / std per channel."""

    def __init__(self, mean: tuple[float, float, float], std: tuple[float, float, float]) -> None:
        levels = torch.arange(256, dtype=torch.uint8).expand(3, 256)  # (3, 256): every value in every channel
        mean_t = torch.as_tensor(mean, dtype=torch.float32).view(3, 1)
        std_t = torch.as_tensor(std, dtype=torch.float32).view(3, 1)
        # The same ops, in the same order and dtype, as torchvision's to_tensor followed by Normalize.
        self.table = levels.to(torch.float32).div(255).sub_(mean_t).div_(std_t).numpy()  # (3, 256) float32

    def __call__(self, image: Image.Image) -> torch.Tensor:
        if image.mode != "RGB":
            raise ValueError(f"Normalizer expects an RGB image, got mode {image.mode!r}")
        pixels = np.asarray(image)  # (H, W, 3) uint8
        out = np.empty((3, image.height, image.width), dtype=np.float32)  # (3, H, W)
        for channel in range(3):
            np.take(self.table[channel], pixels[..., channel], out=out[channel])
        return torch.from_numpy(out)
