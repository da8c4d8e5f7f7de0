"""The image tower's input contract: images of exactly the size the model was built for.

`vision.image_size` is the one source of truth for the input size (the preprocessing produces it, see
`CLIPConfig`); the towers check what they are given against it rather than embedding a wrongly sized
batch without a word.
"""

from __future__ import annotations

import torch

from .config import VisionConfig


def check_image_size(images: torch.Tensor, cfg: VisionConfig, any_size: bool = False) -> None:
    """Refuse images (B, 3, H, W) the tower was not built for, naming both sizes and the fix.

    A ViT's patch convolution silently drops the pixels beyond the last whole patch, and a smaller grid would
    silently meet other positions, so a size other than `cfg.image_size` is an error unless `any_size`
    (explicit position interpolation); then it still has to be a whole number of patches, unless it is the
    configured size itself (ViT-SO400M-14-SigLIP-384 was trained on 384 px with 14 px patches: a 27 x 27 grid
    that leaves 6 pixel rows and columns out, as the reference does). Plain int comparisons: torch.compile
    turns them into shape guards, with no graph break.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images shaped (batch, 3, height, width), got {tuple(images.shape)}")
    height, width = images.shape[-2], images.shape[-1]
    side = cfg.image_size
    if any_size and (height, width) != (side, side):
        patch = cfg.patch_size or 32
        if height % patch or width % patch:
            raise ValueError(
                f"images are {height}x{width}, not a multiple of the patch size {patch}; resize them to a multiple"
            )
    elif (height, width) != (side, side):
        raise ValueError(
            f"images are {height}x{width} but this model takes {side}x{side} (vision.image_size); "
            "preprocess with clipforge.get_preprocess(model)"
        )

