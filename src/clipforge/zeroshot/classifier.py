"""Zero-shot classification with prompt ensembling (Radford et al. 2021, section 3.1.4).

Each class is embedded under every template; the class's weight is the mean of its L2-normalised
text embeddings, renormalised. An image's class probabilities are softmax(logit_scale * cos), the
same scaling the model was trained with.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from ..models.clip import CLIP
from .templates import check_templates


@torch.no_grad()
def build_class_weights(
    model: CLIP,
    tokenizer: Callable[[list[str]], torch.Tensor],
    classnames: Sequence[str],
    templates: Sequence[str],
    batch_size: int = 256,
) -> torch.Tensor:
    """(embed_dim, num_classes) matrix of ensembled, unit-norm class embeddings."""
    if not classnames:
        raise ValueError("zero-shot classification needs at least one class name")
    templates = check_templates(list(templates))
    device = next(model.parameters()).device
    prompts = [t.format(c) for c in classnames for t in templates]  # class-major: C * T prompts
    chunks = []
    for start in range(0, len(prompts), batch_size):
        tokens = tokenizer(prompts[start : start + batch_size]).to(device)
        chunks.append(model.encode_text(tokens, normalize=True).float())
    per_prompt = torch.cat(chunks).view(len(classnames), len(templates), -1)  # (C, T, D)
    return F.normalize(per_prompt.mean(dim=1), dim=-1).T.contiguous()  # (D, C)


class ZeroShotClassifier:
    """Classify images among `classnames` by text prompts alone.

    `predict(images)` takes a preprocessed batch (B, 3, H, W) and returns probabilities (B, C);
    `logits(images)` the scaled cosine similarities.
    """

    def __init__(
        self,
        model: CLIP,
        tokenizer: Callable[[list[str]], torch.Tensor],
        classnames: Sequence[str],
        templates: Sequence[str] = ("a photo of a {}.",),
        batch_size: int = 256,
    ) -> None:
        self.model = model
        self.classnames = list(classnames)
        self.templates = list(templates)
        self.weights = build_class_weights(model, tokenizer, self.classnames, self.templates, batch_size)

    @torch.no_grad()
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        device = self.weights.device
        features = self.model.encode_image(images.to(device), normalize=True).float()  # (B, D)
        return self.model.logit_scale.exp().float() * features @ self.weights  # (B, C)

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits(images).softmax(dim=-1)

    def top_k(self, images: torch.Tensor, k: int = 5) -> list[list[tuple[str, float]]]:
        probs = self.predict(images)
        values, indices = probs.topk(min(k, probs.shape[1]), dim=-1)
        return [
            [(self.classnames[i], float(p)) for p, i in zip(row_p.tolist(), row_i.tolist())]
            for row_p, row_i in zip(values, indices)
        ]
