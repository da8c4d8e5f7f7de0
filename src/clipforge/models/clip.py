"""The CLIP model: an image tower and a text tower projected into one joint embedding space.

Radford et al. 2021, "Learning Transferable Visual Models From Natural Language Supervision".
One class serves every architecture (STYLE.md rule 3): the image tower is a ViT or a ModifiedResNet,
chosen by `VisionConfig.patch_size`; the text tower is configured by `TextConfig`; a learnable
temperature `logit_scale` (log-space) and, for sigmoid-loss models (SigLIP, Zhai et al. 2023), a
learnable `logit_bias`. Parameters live under `visual.` and `text.`; `weights/` maps public
checkpoint layouts onto these names.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import CLIPConfig
from .layers import Attention
from .resnet import ModifiedResNet
from .text import TextTransformer
from .vit import VisionTransformer


class CLIP(nn.Module):
    """Two-tower contrastive model.

    `forward(images, tokens)` returns a dict with `image_features` (B, D) and `text_features` (T, D),
    both L2-normalised, `logit_scale` (the temperature, already exponentiated) and, when the model
    has one, `logit_bias`. Logits for a batch are `logit_scale * image_features @ text_features.T
    (+ logit_bias)`.
    """

    def __init__(self, config: CLIPConfig) -> None:
        super().__init__()
        self.config = config
        tower = ModifiedResNet if config.vision.is_resnet else VisionTransformer
        self.visual = tower(config.vision, config.embed_dim)
        self.text = TextTransformer(config.text, config.embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(float(config.init_logit_scale)))
        if config.init_logit_bias is not None:
            self.logit_bias = nn.Parameter(torch.tensor(float(config.init_logit_bias)))
        else:
            self.logit_bias = None

    @property
    def embed_dim(self) -> int:
        return self.config.embed_dim

    @property
    def context_length(self) -> int:
        return self.config.text.context_length

    @property
    def image_size(self) -> int:
        return self.config.vision.image_size

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute activations in backward to save memory; outputs are unchanged."""
        self.visual.set_grad_checkpointing(enable)
        self.text.set_grad_checkpointing(enable)

    def set_fused_attention(self, enable: bool = True) -> None:
        """Use torch SDPA kernels (default) or the explicit softmax(QK^T)V path."""
        for module in self.modules():
            if isinstance(module, Attention):
                module.fused = enable

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Images (B, 3, H, W), already preprocessed -> features (B, embed_dim)."""
        dtype = next(self.visual.parameters()).dtype
        features = self.visual(images.to(dtype))
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Token ids (T, context_length) -> features (T, embed_dim)."""
        features = self.text(tokens)
        return F.normalize(features, dim=-1) if normalize else features

    def forward(
        self, images: torch.Tensor | None = None, tokens: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {"logit_scale": self.logit_scale.exp()}
        if images is not None:
            out["image_features"] = self.encode_image(images, normalize=True)
        if tokens is not None:
            out["text_features"] = self.encode_text(tokens, normalize=True)
        if self.logit_bias is not None:
            out["logit_bias"] = self.logit_bias
        return out

    def get_logits(self, images: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits_per_image (B, T), logits_per_text (T, B))."""
        out = self(images, tokens)
        logits = out["logit_scale"] * out["image_features"] @ out["text_features"].T
        if self.logit_bias is not None:
            logits = logits + self.logit_bias
        return logits, logits.T
