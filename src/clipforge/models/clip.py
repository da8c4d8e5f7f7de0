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
from .convnext import ConvNeXt
from .fastvit import FastViT
from .freeze import lock_image, lock_text
from .layers import Attention
from .output import CLIPOutput
from .resnet import ModifiedResNet
from .text import TextTransformer
from .vit import VisionTransformer


class CLIP(nn.Module):
    """Two-tower contrastive model.

    `forward(images, tokens)` returns a `CLIPOutput` (models/output.py) with `image_features` (B, D)
    and `text_features` (T, D), both L2-normalised, `logit_scale` (the temperature, already
    exponentiated) and, when the model has one, `logit_bias`. Read it by attribute
    (`out.image_features`), by key (`out["logit_scale"]`, `"logit_bias" in out`), or unpack it in
    open_clip's order: `image_features, text_features, logit_scale[, logit_bias] = model(images, tokens)`
    (iteration yields values, not keys as for a plain dict). Logits for a batch are
    `logit_scale * image_features @ text_features.T (+ logit_bias)`; `get_logits` computes them.
    """

    def __init__(self, config: CLIPConfig) -> None:
        super().__init__()
        self.config = config
        tower = ConvNeXt if config.vision.convnext else ModifiedResNet if config.vision.is_resnet else VisionTransformer
        if config.vision.fastvit is not None:  # MobileCLIP's FastViT / MCi tower (models/fastvit.py)
            tower = FastViT
        self.visual = tower(config.vision, config.embed_dim)
        if config.text.is_hf:  # a Hugging Face encoder (XLM-R, RoBERTa, BERT); imports transformers lazily
            from .hf_text import HFTextTower

            self.text = HFTextTower(config.text, config.embed_dim)
        else:
            self.text = TextTransformer(config.text, config.embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(float(config.init_logit_scale)))
        if config.init_logit_bias is not None:
            self.logit_bias = nn.Parameter(torch.tensor(float(config.init_logit_bias)))
        else:
            self.logit_bias = None

    @property
    def embed_dim(self) -> int:
        """Size D of the shared image-text embedding space."""
        return self.config.embed_dim

    @property
    def context_length(self) -> int:
        """Token sequence length the text tower takes (77 for OpenAI's models)."""
        return self.config.text.context_length

    @property
    def image_size(self) -> int:
        """Side in pixels of the square images the image tower takes."""
        return self.config.vision.image_size

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute activations in backward to save memory; outputs are unchanged."""
        self.visual.set_grad_checkpointing(enable)
        self.text.set_grad_checkpointing(enable)

    def set_position_interpolation(self, enable: bool = True) -> None:
        """Let the image tower take inputs of other sizes than `image_size` (whole patches), its position grid
        resampled to theirs: CLIPA's reduced-resolution training phases. Off by default, so that an image
        preprocessed for another model is an error rather than a silently wrong embedding; ViT towers only."""
        self.visual.set_position_interpolation(enable)

    def set_fused_attention(self, enable: bool = True) -> None:
        """Use torch SDPA kernels (default) or the explicit softmax(QK^T)V path."""
        for module in self.modules():
            if isinstance(module, Attention):
                module.fused = enable

    def lock_image_tower(self, unlocked_groups: int = 0, freeze_bn_stats: bool = False) -> None:
        """Freeze the image tower (LiT) except its last `unlocked_groups` parameter groups, counted as
        open_clip counts them (1 = the projection only); see models/freeze.py for the groups."""
        lock_image(self.visual, unlocked_groups, freeze_bn_stats)

    def lock_text_tower(self, unlocked_layers: int = 0, freeze_layer_norm: bool = True) -> None:
        """Freeze the text tower except its last `unlocked_layers` parameter groups (open_clip's counting)."""
        lock_text(self.text, unlocked_layers, freeze_layer_norm)

    def encode_image(self, images: torch.Tensor, normalize: bool = False, project: bool = True) -> torch.Tensor:
        """Images (B, 3, H, W), already preprocessed -> features (B, embed_dim).

        `project=False` returns the input of the image tower's last linear map instead (B, width'):
        for a ViT the pooled token after `ln_post`, before `visual.proj`; for a ModifiedResNet the
        attention pool's output before `attnpool.c_proj`. Adapters that fine-tune that map (ProLIP) cache
        these and apply `project_image`; `normalize` then normalises the un-projected features.
        """
        dtype = next(self.visual.parameters()).dtype
        features = self.visual(images.to(dtype), project=project)
        return F.normalize(features, dim=-1) if normalize else features

    @property
    def image_projection(self) -> nn.Parameter | nn.Linear:
        """The image tower's last linear map: a ViT's bias-free (width, D) `visual.proj` matrix, or a
        ModifiedResNet's `visual.attnpool.c_proj` Linear (with bias). `project_image` applies either."""
        return self.visual.projection

    def project_image(self, pre_features: torch.Tensor) -> torch.Tensor:
        """`encode_image(images, project=False)` features (B, width') -> `encode_image(images)` features (B, D)."""
        return self.visual.project(pre_features)

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Token ids (T, context_length) -> features (T, embed_dim)."""
        features = self.text(tokens)
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text_embeddings(
        self,
        token_embeddings: torch.Tensor,
        tokens: torch.Tensor | None = None,
        *,
        end_positions: torch.Tensor | None = None,
        normalize: bool = False,
    ) -> torch.Tensor:
        """Token embeddings (T, L, width) -> text features (T, embed_dim), for prompt learning (CoOp, CoCoOp).

        Runs the text tower from its input embeddings instead of token ids, so learnable context vectors
        can stand in for some of `text.token_embedding(tokens)`: positional embeddings, the causal mask and
        the pooling are applied inside, exactly as `encode_text` does (identical results for identical
        embeddings). The pooling position is read from `tokens` (T, L), the ids of the prompt with any
        placeholder words where the context goes, or given directly as `end_positions` (T,).
        """
        features = self.text.forward_embeddings(token_embeddings, tokens, end_positions)
        return F.normalize(features, dim=-1) if normalize else features

    def forward(
        self,
        images: torch.Tensor | None = None,
        tokens: torch.Tensor | None = None,
        *,
        output_dict: bool | None = None,
    ) -> CLIPOutput:
        """Images (B, 3, H, W) and/or tokens (T, context_length) -> `CLIPOutput`; either may be omitted.

        `output_dict` is accepted for open_clip code that passes it and changes nothing: the one
        `CLIPOutput` serves both its dict (True) and tuple (False) readers. `logit_bias` is returned as
        a copy, not the Parameter itself: DDP(find_unused_parameters=True) would otherwise find the
        parameter among the outputs and fail in backward ("marked as ready twice").
        """
        del output_dict
        return CLIPOutput(
            image_features=self.encode_image(images, normalize=True) if images is not None else None,
            text_features=self.encode_text(tokens, normalize=True) if tokens is not None else None,
            logit_scale=self.logit_scale.exp(),
            logit_bias=self.logit_bias.clone() if self.logit_bias is not None else None,
        )

    def get_logits(self, images: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits_per_image (B, T), logits_per_text (T, B))."""
        out = self(images, tokens)
        logits = out.logit_scale * out.image_features @ out.text_features.T  # (B, T)
        if out.logit_bias is not None:
            logits = logits + out.logit_bias
        return logits, logits.T
