"""Fashion-MNIST as a training source: the 60,000 images kept as one uint8 array, batches built without PIL.

Each sample's caption is one of the templates (FASHION_TRAIN_TEMPLATES by default) filled with its class name,
the template chosen from the sample slot's seed, so captions vary between epochs yet repeat exactly on resume.
Images go through `greyscale.grey_to_model_input`, equal to EvalTransform on each image; there is no random
augmentation on this path (a TrainTransform contributes its size and normalisation only).
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from clipforge.models.config import PreprocessConfig

from ..builtins import FASHION_MNIST_ROOT, FASHION_TRAIN_TEMPLATES, load_fashion_mnist
from ..greyscale import grey_to_model_input
from .base import TensorSource


class FashionMnistSource(TensorSource):
    """One split of Fashion-MNIST with template captions."""

    def __init__(self, split: str = "train", root: str | None = None, templates: tuple[str, ...] | None = None) -> None:
        root = root or FASHION_MNIST_ROOT
        images, labels, classes = load_fashion_mnist(split, root)
        self.name = f"fashion_mnist:{split}"
        self.grey = images  # (N, 28, 28) uint8, read-only, shared with forked workers
        self.labels = np.asarray(labels)  # (N,)
        self.templates = tuple(templates or FASHION_TRAIN_TEMPLATES)
        self.num_classes = len(classes)
        self.caption_table = [t.format(c) for t in self.templates for c in classes]  # row = template * C + class

    def __len__(self) -> int:
        return len(self.labels)

    def images(self, indices: np.ndarray, cfg: PreprocessConfig) -> torch.Tensor:
        return grey_to_model_input(self.grey[np.asarray(indices, dtype=np.int64)], cfg)  # numpy gather: no threads

    def pil_image(self, index: int) -> Image.Image:
        """Image `index` as a 28x28 greyscale (mode L) PIL image."""
        return Image.fromarray(self.grey[index])  # (28, 28) uint8 -> mode "L"

    def caption_ids(self, indices: np.ndarray, seeds: np.ndarray) -> np.ndarray:
        template = (np.asarray(seeds, dtype=np.uint64) % np.uint64(len(self.templates))).astype(np.int64)
        return template * self.num_classes + self.labels[np.asarray(indices, dtype=np.int64)]
