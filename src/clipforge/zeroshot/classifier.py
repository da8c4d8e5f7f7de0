"""Zero-shot classification with prompt ensembling (Radford et al. 2021, section 3.1.4).

Each class is embedded under every template; the class's weight is the mean of its L2-normalised
text embeddings, renormalised. An image's class probabilities are softmax(logit_scale * cos), the
same scaling the model was trained with. Templates are strings with `{}` or callables (open_clip's
form); `ZeroShotClassifier` also takes a template-set name ("imagenet", "simple", "photo") or file, and
images as a preprocessed batch, PIL images or image files.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from ..image import build_transform, preprocess_batch
from ..models.clip import CLIP
from .templates import Template, check_templates, get_templates, render

ImageInput = torch.Tensor | Image.Image | str | Path | Sequence[Image.Image | str | Path]


@torch.no_grad()
def build_class_weights(
    model: CLIP,
    tokenizer: Callable[[list[str]], torch.Tensor],
    classnames: Sequence[str],
    templates: Sequence[Template],
    batch_size: int = 256,
) -> torch.Tensor:
    """(embed_dim, num_classes) matrix of ensembled, unit-norm class embeddings."""
    if not classnames:
        raise ValueError("zero-shot classification needs at least one class name")
    templates = check_templates(list(templates))
    device = next(model.parameters()).device
    prompts = [render(t, c) for c in classnames for t in templates]  # class-major: C * T prompts
    chunks = []
    for start in range(0, len(prompts), batch_size):
        tokens = tokenizer(prompts[start : start + batch_size]).to(device)
        chunks.append(model.encode_text(tokens, normalize=True).float())
    per_prompt = torch.cat(chunks).view(len(classnames), len(templates), -1)  # (C, T, D)
    return F.normalize(per_prompt.mean(dim=1), dim=-1).T.contiguous()  # (D, C)


class ZeroShotClassifier:
    """Classify images among `classnames` by text prompts alone.

    `templates` is a list of templates, or the name of a built-in set / template file for `get_templates`.
    `predict(images)` returns probabilities (B, C) and `logits(images)` the scaled cosine similarities, for
    a preprocessed batch (B, 3, H, W), one PIL image or image file (B = 1), or a list of them; PIL images
    and files go through the model's own preprocessing (`get_preprocess(model)`).
    """

    def __init__(
        self,
        model: CLIP,
        tokenizer: Callable[[list[str]], torch.Tensor],
        classnames: Sequence[str],
        templates: Sequence[Template] | str | Path = ("a photo of a {}.",),
        batch_size: int = 256,
    ) -> None:
        self.model = model
        self.classnames = list(classnames)
        if isinstance(templates, str) and "{}" in templates:  # one template, not a set name or file
            templates = [templates]
        self.templates = get_templates(templates) if isinstance(templates, str | Path) else list(templates)
        self.weights = build_class_weights(model, tokenizer, self.classnames, self.templates, batch_size)
        self._preprocess = None

    def _pixels(self, images: ImageInput) -> torch.Tensor:
        """A preprocessed batch (B, 3, H, W) for any accepted image input."""
        if isinstance(images, torch.Tensor):
            return images
        if isinstance(images, Image.Image | str | Path):
            images = [images]
        if self._preprocess is None:
            config = getattr(self.model, "config", None)
            if config is None:
                raise TypeError("this model has no .config to preprocess images with; pass a (B, 3, H, W) tensor")
            self._preprocess = build_transform(config.preprocess)
        return preprocess_batch(images, self._preprocess)

    @torch.no_grad()
    def logits(self, images: ImageInput) -> torch.Tensor:
        """Scaled cosine similarities of images to the classes: (B, C)."""
        device = self.weights.device
        features = self.model.encode_image(self._pixels(images).to(device), normalize=True).float()  # (B, D)
        return self.model.logit_scale.exp().float() * features @ self.weights  # (B, C)

    def predict(self, images: ImageInput) -> torch.Tensor:
        """Class probabilities (softmax of the logits): (B, C)."""
        return self.logits(images).softmax(dim=-1)

    def top_k(self, images: ImageInput, k: int = 5) -> list[list[tuple[str, float]]]:
        """For each image, the `k` most probable (class name, probability) pairs, best first."""
        probs = self.predict(images)
        values, indices = probs.topk(min(k, probs.shape[1]), dim=-1)
        return [
            [(self.classnames[i], float(p)) for p, i in zip(row_p.tolist(), row_i.tolist())]
            for row_p, row_i in zip(values, indices)
        ]
