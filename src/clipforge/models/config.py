"""Frozen, validated configuration dataclasses for CLIP models.

A model is built from a `CLIPConfig` alone (DESIGN.md: models never import weights/). Every choice
that open_clip infers from substrings of a model name is an explicit field here (STYLE.md rule 2).
Field names follow open_clip's JSON model configs where they mean the same thing, so its
`open_clip_config.json` files translate field by field (see `weights/openclip.py`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal

Activation = Literal["gelu", "quick_gelu", "gelu_tanh"]
VisionPool = Literal["tok", "avg", "none", "map"]
TextPool = Literal["argmax", "eos", "first", "last", "none"]
ResizeMode = Literal["shortest", "longest", "squash"]
HF_POOLERS = ("mean_pooler", "cls_pooler", "cls_last_hidden_state_pooler")
Interpolation = Literal["bicubic", "bilinear", "nearest"]

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


class ConfigError(ValueError):
    """A configuration field has a value the model cannot be built from."""


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _check_choice(name: str, value: Any, choices: tuple) -> None:
    _check(value in choices, f"{name}={value!r} is not one of {list(choices)}")


@dataclass(frozen=True)
class VisionConfig:
    """Image tower.

    Fields:
        image_size: input resolution in pixels (square).
        layers: transformer depth (int) for a ViT; four stage depths (tuple) for a ModifiedResNet.
        width: transformer width for a ViT; stem width for a ModifiedResNet (64 for RN50).
        heads: attention heads; None means width // head_width.
        head_width: width per head used when heads is None (64 as in CLIP).
        patch_size: ViT patch size; None selects the ModifiedResNet tower.
        mlp_ratio: MLP hidden width / width.
        act: "gelu", "quick_gelu" (OpenAI's sigmoid approximation used by its checkpoints) or "gelu_tanh"
            (the tanh approximation SigLIP was trained with).
        ls_init_value: LayerScale init; None disables LayerScale.
        pool_type: "tok" (class token), "avg" (mean of patch tokens), "none", or "map" (SigLIP's multihead
            attention pooling head: a learned probe attends to the tokens after ln_post; models/map_head.py).
        final_ln_after_pool: apply ln_post after pooling instead of before.
        no_ln_pre: drop the LayerNorm before the transformer.
        attentional_pool: replace token pooling by a learned-query attention pooler (CoCa style).
        attn_pooler_queries / attn_pooler_heads: its query count and heads.
        patch_dropout: fraction of patch tokens dropped in training (FLIP); 0 disables.
        layer_norm_eps: LayerNorm epsilon.
        class_token: prepend a learned class token (CLIP); False gives SigLIP's patch-tokens-only sequence.
        patch_bias: the patch embedding convolution has a bias (SigLIP); CLIP's has none.
        no_proj: no projection after pooling (SigLIP: the pooled feature is the embedding, so embed_dim == width).
        convnext: a ConvNeXt tower (models/convnext.py): layers = four stage depths, width = first stage width
            (doubled per stage), patch_size = stem stride (4), pool_type "avg"; ls_init_value is its LayerScale.
        head_proj: a ConvNeXt's projection head: one Linear ("linear") or open_clip's GELU MLP ("mlp").
        head_proj_bias: a bias on the ConvNeXt head's last Linear (open_clip's timm_proj_bias).
        drop_path: a ConvNeXt's stochastic depth rate for its last block (linear from 0 over blocks, as timm).
        rope: 2-D rotary position embeddings on the patch tokens' queries and keys (EVA02; models/rope.py).
        rope_ref_grid: grid side the rotary coordinates are scaled onto (EVA02-B/16: 16); None uses the actual grid.
        rope_theta: rotary frequency base (10000).
        mlp_type: "mlp" (CLIP's) or "swiglu" (EVA02's gated SiLU MLP; models/eva.py).
        scale_mlp: LayerNorm on the MLP's hidden activations before its output projection (EVA's sub-LN).
        scale_attn_inner: LayerNorm on the attention output before its projection (EVA-CLIP's sub-LN).
        proj_bias: the final projection has a bias (EVA-CLIP's timm head is a Linear with bias).
        conv_stem: MobileCLIP's MCi stem (models/mci_stem.py: 3 strided convs with BatchNorm) replaces the patch conv.
        no_embed_class: the positional embedding covers the patch tokens only (timm's no_embed_class; MobileCLIP).
        fastvit: a FastViT / MCi tower (models/fastvit.py; MobileCLIP-S*, MobileCLIP2-S*): "mci" (MCi0-2: 4 stages,
            BatchNorm attention blocks) or "mci-large" (MCi3/4: 5 stages, LayerNorm2d); layers = stage depths,
            width = first stage width (doubled per stage), patch_size = stem stride (4), pool_type "avg".
        key_bias: the EVA attention's key third of in_proj_bias is used and trained; False (timm's EVA: q and v
            biases only) makes it a structural zero that takes no part in the forward, so it gets no gradient.
    """

    image_size: int = 224
    layers: int | tuple[int, ...] = 12
    width: int = 768
    heads: int | None = None
    head_width: int = 64
    patch_size: int | None = 16
    mlp_ratio: float = 4.0
    act: Activation = "gelu"
    ls_init_value: float | None = None
    pool_type: VisionPool = "tok"
    final_ln_after_pool: bool = False
    no_ln_pre: bool = False
    attentional_pool: bool = False
    attn_pooler_queries: int = 256
    attn_pooler_heads: int = 8
    patch_dropout: float = 0.0
    layer_norm_eps: float = 1e-5
    class_token: bool = True
    patch_bias: bool = False
    no_proj: bool = False
    convnext: bool = False
    head_proj: Literal["linear", "mlp"] = "linear"
    head_proj_bias: bool = False
    drop_path: float = 0.0
    rope: bool = False
    rope_ref_grid: int | None = None
    rope_theta: float = 10000.0
    mlp_type: Literal["mlp", "swiglu"] = "mlp"
    scale_mlp: bool = False
    scale_attn_inner: bool = False
    proj_bias: bool = False
    conv_stem: bool = False
    no_embed_class: bool = False
    fastvit: str | None = None
    key_bias: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.layers, list):
            object.__setattr__(self, "layers", tuple(self.layers))
        _check_types(self, "vision")
        _check_eva_options(self)
        _check_mci_options(self)
        _check_choice("vision.act", self.act, ("gelu", "quick_gelu", "gelu_tanh"))
        _check_choice("vision.pool_type", self.pool_type, ("tok", "avg", "none", "map"))
        _check(
            self.class_token or self.pool_type != "tok",
            "vision.pool_type='tok' needs a class token (class_token=True); use 'map' or 'avg' without one",
        )
        _check(
            not (self.pool_type == "map" and (self.attentional_pool or self.final_ln_after_pool)),
            "vision.pool_type='map' (SigLIP's attention-pooling head) cannot be combined with attentional_pool or "
            "final_ln_after_pool",
        )
        _check(self.image_size > 0, f"vision.image_size must be positive, got {self.image_size}")
        _check(self.width > 0, f"vision.width must be positive, got {self.width}")
        _check(0.0 <= self.patch_dropout < 1.0, f"vision.patch_dropout must be in [0, 1), got {self.patch_dropout}")
        _check_choice("vision.head_proj", self.head_proj, ("linear", "mlp"))
        _check(0.0 <= self.drop_path < 1.0, f"vision.drop_path must be in [0, 1), got {self.drop_path}")
        if not self.convnext:
            _check(
                (self.head_proj, self.head_proj_bias, self.drop_path if self.fastvit is None else 0.0)
                == ("linear", False, 0.0),
                "vision.head_proj / head_proj_bias / drop_path apply to ConvNeXt towers only (vision.convnext)",
            )
        if self.fastvit is not None:
            _check_fastvit(self)
        elif self.convnext:
            _check_convnext(self)
        elif self.is_resnet:
            _check(
                isinstance(self.layers, tuple) and len(self.layers) == 4,
                f"a ModifiedResNet (patch_size=None) needs layers as four stage depths, got {self.layers!r}",
            )
            _check(self.image_size % 32 == 0, f"ModifiedResNet needs image_size divisible by 32, got {self.image_size}")
        else:
            _check(
                isinstance(self.layers, int) and self.layers > 0,
                f"vision.layers must be a positive int for a ViT, got {self.layers!r}",
            )
            # A size that is not a multiple of the patch (ViT-SO400M-14-SigLIP-384: 384 / 14) gets the floored grid,
            # as the reference patch conv (stride = patch) ignores the last partial rows and columns.
            _check(
                self.patch_size <= self.image_size,
                f"vision.patch_size {self.patch_size} exceeds image_size {self.image_size}: not one whole patch",
            )
            _check(
                self.width % self.num_heads == 0, f"vision.width {self.width} not divisible by heads {self.num_heads}"
            )

    @property
    def uses_eva_blocks(self) -> bool:
        """Whether the ViT's blocks are EVA blocks (models/eva.py: rope, SwiGLU or sub-LayerNorms)."""
        return self.rope or self.mlp_type != "mlp" or self.scale_mlp or self.scale_attn_inner

    @property
    def is_resnet(self) -> bool:
        """Whether this is a ModifiedResNet tower (no patch size) rather than a ViT."""
        return self.patch_size is None and not self.convnext

    @property
    def num_heads(self) -> int:
        """Attention heads: `heads` when given, else width // head_width."""
        return self.heads if self.heads is not None else max(1, self.width // self.head_width)

    @property
    def grid_size(self) -> int:
        """Side of the patch grid (ViT) or of the final feature map (ResNet, stride 32)."""
        if self.fastvit is not None:  # the final map of a FastViT (stride 32, or 64 with five stages)
            return self.image_size // (self.patch_size * 2 ** (len(self.layers) - 1))
        return self.image_size // self.patch_size if self.patch_size and not self.convnext else self.image_size // 32


def _check_eva_options(cfg: VisionConfig) -> None:
    """EVA's block options (models/eva.py) exist for ViT towers only, and rotary embeddings need whole channel
    quadrants per head; with patch dropout the kept patches keep their own positions' rotations (models/vit.py)."""
    _check_choice("vision.mlp_type", cfg.mlp_type, ("mlp", "swiglu"))
    _check(
        cfg.key_bias or (cfg.uses_eva_blocks and cfg.patch_size is not None and not cfg.convnext),
        "vision.key_bias=false applies to EVA attention blocks only (vision.rope / mlp_type / scale_mlp / "
        "scale_attn_inner); remove it for this tower",
    )
    if not cfg.uses_eva_blocks and not cfg.proj_bias:
        return
    _check(
        cfg.patch_size is not None and not cfg.convnext,
        "vision.rope / mlp_type / scale_mlp / scale_attn_inner / proj_bias are ViT options (EVA); this config is "
        "not a ViT tower",
    )
    if cfg.rope:
        _check(
            (cfg.width // cfg.num_heads) % 4 == 0,
            f"vision.rope needs a head width divisible by 4, got {cfg.width} / {cfg.num_heads} heads",
        )
        _check(cfg.rope_theta > 0, f"vision.rope_theta must be positive, got {cfg.rope_theta}")
        _check(
            cfg.rope_ref_grid is None or cfg.rope_ref_grid > 0,
            f"vision.rope_ref_grid must be positive or None, got {cfg.rope_ref_grid}",
        )
        _check(cfg.pool_type != "map" or cfg.class_token, "vision.rope with pool_type 'map' is not supported")


def _check_mci_options(cfg: VisionConfig) -> None:
    """MobileCLIP's ViT options: the MCi stem has a fixed total stride of 16 and width/4 inner channels."""
    if not (cfg.conv_stem or cfg.no_embed_class):
        return
    _check(
        cfg.patch_size is not None and not cfg.convnext,
        "vision.conv_stem / no_embed_class are ViT options (MobileCLIP); this config is not a ViT tower",
    )
    if cfg.conv_stem:
        _check(cfg.patch_size == 16, f"vision.conv_stem strides 16: set patch_size 16, not {cfg.patch_size}")
        _check(cfg.width % 4 == 0, f"vision.conv_stem needs a width divisible by 4, got {cfg.width}")
        _check(not cfg.patch_bias, "vision.patch_bias does not apply with vision.conv_stem (its last conv has a bias)")


def _check_fastvit(cfg: VisionConfig) -> None:
    """A FastViT tower's shape (models/fastvit.py): stage depths, stem stride 4, an image size its stride divides;
    options of other towers are refused rather than ignored."""
    _check_choice("vision.fastvit", cfg.fastvit, ("mci", "mci-large"))
    _check(not cfg.convnext, "vision.fastvit and vision.convnext are two different towers; set one")
    _check(cfg.patch_size == 4, f"a FastViT needs vision.patch_size 4, its stem stride, got {cfg.patch_size}")
    _check(
        not (cfg.attentional_pool or cfg.patch_dropout or cfg.final_ln_after_pool or cfg.no_ln_pre or cfg.no_proj
             or cfg.ls_init_value is not None),
        "vision.attentional_pool / patch_dropout / final_ln_after_pool / no_ln_pre / no_proj / ls_init_value are "
        "options of other towers; a FastViT takes none of them",
    )
    from .fastvit import check_fastvit_config  # the tower states its own shape rules

    problems = check_fastvit_config(cfg)
    _check(not problems, "; ".join(problems))


def _check_convnext(cfg: VisionConfig) -> None:
    """A ConvNeXt tower's shape: four stage depths, a stem stride, an image size its 32x downsampling divides;
    the ViT-only options (token pooling, attentional pooler, patch dropout) are refused rather than ignored."""
    _check(
        isinstance(cfg.layers, tuple) and len(cfg.layers) == 4,
        f"a ConvNeXt (vision.convnext) needs layers as four stage depths, got {cfg.layers!r}",
    )
    _check(cfg.patch_size is not None, "a ConvNeXt needs vision.patch_size, its stem stride (4)")
    _check(cfg.image_size % 32 == 0, f"a ConvNeXt needs image_size divisible by 32, got {cfg.image_size}")
    _check(cfg.pool_type == "avg", f"a ConvNeXt pools by average: set vision.pool_type 'avg', got {cfg.pool_type!r}")
    _check(
        not (cfg.attentional_pool or cfg.patch_dropout or cfg.final_ln_after_pool or cfg.no_ln_pre or cfg.no_proj),
        "vision.attentional_pool / patch_dropout / final_ln_after_pool / no_ln_pre / no_proj are ViT options; a "
        "ConvNeXt takes none of them",
    )


@dataclass(frozen=True)
class TextConfig:
    """Text tower.

    Fields:
        context_length: number of token positions (77 in CLIP).
        vocab_size: token embedding rows (49408 for CLIP's BPE).
        width / heads / layers / mlp_ratio: transformer shape; heads None means width // 64.
        act: "gelu", "quick_gelu" or "gelu_tanh".
        ls_init_value: LayerScale init; None disables it.
        causal_mask: causal attention (CLIP); False gives bidirectional attention (SigLIP-style).
        pad_mask: with causal_mask False, also mask padding keys (pad_id).
        pool_type: "argmax" (the end token has the highest id, OpenAI), "eos" (first eos_id),
            "first", "last" or "none".
        pad_id / eos_id: token ids used by pool_type "eos" and pad_mask.
        proj_bias: text projection as a Linear with bias (SigLIP); otherwise a bias-free matrix.
        layer_norm_eps: LayerNorm epsilon.
        hf_config: a Hugging Face encoder's config.json fields (with "model_type"); set, it replaces the CLIP text
            transformer by that encoder (models/hf_text.py) and the fields above except context_length are unused.
        hf_model_name: the Hugging Face model the tower comes from (e.g. "xlm-roberta-base"); the default tokenizer.
        hf_tokenizer_name: a hub name or local folder of the tokenizer when it differs from hf_model_name. In a
            written config "." means "the folder this config is in": writers copy a local tokenizer's files beside
            the weights (never an absolute source path), readers resolve "." to that folder's path.
        hf_pooler_type: "mean_pooler" (mean over non-padding tokens), "cls_pooler" (the encoder's pooler output)
            or "cls_last_hidden_state_pooler" (the first token's last hidden state).
        hf_proj_type: "mlp" (Linear, GELU, Linear; open_clip's default), "linear", "none", or "altclip" (AltCLIP's
            LayerNorm, Linear with bias to hf_config["project_dim"], bias-free Linear; models/hf_text.py).
        tokenizer_clean: how texts are cleaned before a Hugging Face tokenizer (open_clip's tokenizer_kwargs.clean):
            "whitespace" (ftfy, HTML unescape, whitespace collapsed), "canonicalize" (also lowercased, punctuation
            removed: ViT-L-14-worldwide's mT5 vocabulary, open_clip's SigLIP 2), "lower" (whitespace + str.lower)
            or "lowercase_only" (transformers' Siglip2Tokenizer: a tokenizers `Lowercase` normaliser step and no
            other cleaning; not open_clip's "lower", which also fixes text and collapses whitespace).
    """

    context_length: int = 77
    vocab_size: int = 49408
    width: int = 512
    heads: int | None = None
    layers: int = 12
    mlp_ratio: float = 4.0
    act: Activation = "gelu"
    ls_init_value: float | None = None
    causal_mask: bool = True
    pad_mask: bool = False
    pool_type: TextPool = "argmax"
    pad_id: int = 0
    eos_id: int = 49407
    proj_bias: bool = False
    layer_norm_eps: float = 1e-5
    hf_config: dict[str, Any] | None = None
    hf_model_name: str | None = None
    hf_tokenizer_name: str | None = None
    hf_pooler_type: str = "mean_pooler"
    hf_proj_type: str = "mlp"
    tokenizer_clean: str = "whitespace"

    def __post_init__(self) -> None:
        _check_types(self, "text")
        _check_choice("text.hf_pooler_type", self.hf_pooler_type, HF_POOLERS)
        _check_choice("text.hf_proj_type", self.hf_proj_type, ("mlp", "linear", "none", "altclip"))
        _check_choice(
            "text.tokenizer_clean", self.tokenizer_clean, ("whitespace", "canonicalize", "lower", "lowercase_only")
        )
        _check(
            self.hf_config is None or isinstance(self.hf_config.get("model_type"), str),
            "text.hf_config needs a \"model_type\" (e.g. \"xlm-roberta\"), as in the model's config.json",
        )
        _check_choice("text.act", self.act, ("gelu", "quick_gelu", "gelu_tanh"))
        _check_choice("text.pool_type", self.pool_type, ("argmax", "eos", "first", "last", "none"))
        _check(self.context_length > 0, f"text.context_length must be positive, got {self.context_length}")
        _check(self.vocab_size > 0, f"text.vocab_size must be positive, got {self.vocab_size}")
        _check(self.layers > 0, f"text.layers must be positive, got {self.layers}")
        _check(self.width % self.num_heads == 0, f"text.width {self.width} not divisible by heads {self.num_heads}")

    @property
    def is_hf(self) -> bool:
        """Whether the tower is a Hugging Face encoder (`hf_config` set) rather than CLIP's text transformer."""
        return self.hf_config is not None

    @property
    def num_heads(self) -> int:
        """Attention heads: `heads` when given, else width // 64."""
        return self.heads if self.heads is not None else max(1, self.width // 64)


@dataclass(frozen=True)
class PreprocessConfig:
    """How images are prepared for this model (what open_clip calls preprocess_cfg).

    Fields:
        size: output side in pixels. Inside a `CLIPConfig` it is always the vision tower's `image_size` (the one
            source of truth for the input size: a model's preprocessing cannot feed it another size); it is a
            field so that a transform can also be built from a `PreprocessConfig` alone.
        mean / std: per-channel normalisation, RGB order.
        interpolation: resize filter.
        resize_mode: "shortest" (resize shortest side, centre crop: CLIP), "longest" (fit inside,
            pad with fill_color), "squash" (resize both sides, ignoring aspect ratio).
        fill_color: padding grey level for "longest".
    """

    size: int = 224
    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD
    interpolation: Interpolation = "bicubic"
    resize_mode: ResizeMode = "shortest"
    fill_color: int = 0

    def __post_init__(self) -> None:
        _check_types(self, "preprocess")
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        _check(len(self.mean) == 3 and len(self.std) == 3, "preprocess mean and std need three values (RGB)")
        _check(all(s > 0 for s in self.std), f"preprocess std must be positive, got {self.std}")
        _check_choice("preprocess.interpolation", self.interpolation, ("bicubic", "bilinear", "nearest"))
        _check_choice("preprocess.resize_mode", self.resize_mode, ("shortest", "longest", "squash"))
        _check(self.size > 0, f"preprocess.size must be positive, got {self.size}")


@dataclass(frozen=True)
class CLIPConfig:
    """A whole CLIP model.

    Fields:
        embed_dim: shared embedding width both towers project into.
        vision / text: tower configs.
        init_logit_scale: initial log temperature (log(1/0.07) as in CLIP).
        init_logit_bias: initial logit bias; None means the model has no bias (softmax-loss CLIP),
            a value adds the learnable bias that sigmoid-loss (SigLIP) models use.
        preprocess: image preprocessing that goes with the model; None gives the defaults. Its `size` must be
            `vision.image_size` (None is filled in with it), and `replace(vision=...)` carries a new image size
            into it: the model's input size is stated once, in `vision.image_size`.
    """

    embed_dim: int = 512
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    init_logit_scale: float = math.log(1 / 0.07)
    init_logit_bias: float | None = None
    preprocess: PreprocessConfig | None = None

    def __post_init__(self) -> None:
        _check_types(self, "model")
        _check(self.embed_dim > 0, f"embed_dim must be positive, got {self.embed_dim}")
        _check(
            not self.vision.no_proj or self.vision.is_resnet or self.embed_dim == self.vision.width,
            f"vision.no_proj needs embed_dim == vision.width (the pooled feature is the embedding); got embed_dim="
            f"{self.embed_dim}, width={self.vision.width}",
        )
        if self.preprocess is None:
            object.__setattr__(self, "preprocess", PreprocessConfig(size=self.vision.image_size))
        _check(
            self.preprocess.size == self.vision.image_size,
            f"preprocess.size={self.preprocess.size} differs from vision.image_size={self.vision.image_size}: the "
            "preprocessing must produce the size the model takes; set vision.image_size only (preprocess.size "
            "follows it, e.g. CLIPConfig.replace(vision=...) or create_model(..., vision={'image_size': N}))",
        )

    def to_dict(self) -> dict[str, Any]:
        """The config as plain JSON-ready data (tuples become lists)."""
        out = dataclasses.asdict(self)
        if isinstance(out["vision"]["layers"], tuple):
            out["vision"]["layers"] = list(out["vision"]["layers"])
        del out["preprocess"]["size"]  # it is vision.image_size: stored once, so no file can make them differ
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CLIPConfig:
        """Build from a plain dict (a JSON file); unknown keys are an error naming them."""
        data = dict(data)
        try:
            vision = _build(VisionConfig, data.pop("vision", {}), "vision")
            text = _build(TextConfig, data.pop("text", {}), "text")
            pre = data.pop("preprocess", None)
            if pre is not None:
                pre = {**pre, "size": _legacy_preprocess_size(pre, vision.image_size)}
            preprocess = _build(PreprocessConfig, pre, "preprocess") if pre is not None else None
        except TypeError as exc:  # pragma: no cover - _build reports unknown keys itself
            raise ConfigError(str(exc)) from exc
        return _build(cls, {**data, "vision": vision, "text": text, "preprocess": preprocess}, "model")

    def replace(self, **changes: Any) -> CLIPConfig:
        """A copy with `changes` applied (validated again). A new `vision` without a new `preprocess` carries its
        image size into the preprocessing, which always produces the size the model takes."""
        vision = changes.get("vision")
        if vision is not None and "preprocess" not in changes and self.preprocess.size != vision.image_size:
            changes["preprocess"] = dataclasses.replace(self.preprocess, size=vision.image_size)
        return dataclasses.replace(self, **changes)


def _legacy_preprocess_size(preprocess: dict[str, Any], image_size: int) -> int:
    """The preprocess size of a config read from a dict: the vision tower's image size.

    clipforge writes no `preprocess.size` (it is `vision.image_size`), but files written before issue 8 carry one,
    and some of them (the Fashion-MNIST quickstart: 32 for a 28 px model) carry another size; such a model was fed
    images its patch grid cut short, so it is read with the size it takes, and a warning names both numbers.
    """
    size = preprocess.get("size", image_size)
    if size != image_size:
        warnings.warn(
            f"preprocess.size={size} differs from vision.image_size={image_size}; the model takes {image_size} px "
            f"images, so its preprocessing now produces {image_size} px (preprocess.size always follows "
            "vision.image_size; a model trained on cropped inputs may score differently)",
            UserWarning,
            stacklevel=4,
        )
    return image_size


def _build(cls: type, values: dict[str, Any], where: str):
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"unknown {where} config field(s) {unknown}; valid fields: {sorted(names)}")
    values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in values.items()}
    return cls(**values)


# Numeric fields that only make sense positive (and finite): a width of 0, a negative head count or a NaN
# epsilon from a hand-edited file must fail here, naming the field, not deep inside the model or silently.
_POSITIVE_FIELDS = frozenset(
    {
        "embed_dim", "image_size", "layers", "width", "heads", "head_width", "patch_size", "mlp_ratio",
        "attn_pooler_queries", "attn_pooler_heads", "layer_norm_eps", "context_length", "vocab_size", "size",
    }
)

# Blocks per tower (summed over stages): a file saying `"num_hidden_layers": 1000000` would otherwise spend hours
# building the meta-device skeleton that its weights are checked against (about 3 ms per block).
MAX_LAYERS = 512


@functools.cache
def _field_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _type_ok(value: Any, hint: Any) -> bool:
    """Whether `value` fits the annotation `hint` (bool is not an int; an int is a float; lists pass as tuples)."""
    origin = typing.get_origin(hint)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is Literal:  # the choice checks name the allowed values; only the kind is checked here
        return isinstance(value, type(typing.get_args(hint)[0]))
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, arg) for arg in typing.get_args(hint))
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, (tuple, list)):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_type_ok(v, args[0]) for v in value)
        return len(value) == len(args) and all(_type_ok(v, a) for v, a in zip(value, args))
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


def _describe(hint: Any) -> str:
    return str(hint).replace("typing.", "").replace("<class '", "").replace("'>", "")


def _check_types(config: Any, where: str) -> None:
    """ConfigError naming the first field whose value has the wrong JSON type, or is a non-positive size.

    Configs come from files (clipforge, open_clip and Hugging Face JSON): `"width": "768"` or `"layers": [2]`
    must be refused here, naming the field, rather than fail later inside the model as a TypeError, build a
    model of another shape, or allocate memory for a bogus size.
    """
    hints = _field_hints(type(config))
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if not _type_ok(value, hints[f.name]):
            raise ConfigError(
                f"{where}.{f.name}={value!r} has the wrong type ({type(value).__name__}); expected "
                f"{_describe(hints[f.name])}"
            )
        if f.name in _POSITIVE_FIELDS and value is not None:
            numbers = value if isinstance(value, (tuple, list)) else (value,)
            _check(
                all(math.isfinite(v) and v > 0 for v in numbers),
                f"{where}.{f.name}={value!r} must be positive and finite",
            )
        if f.name == "layers" and value is not None:  # each block costs time even on the meta device
            depth = sum(value) if isinstance(value, (tuple, list)) else value
            _check(
                depth <= MAX_LAYERS,
                f"{where}.layers={value!r}: {depth} blocks is over the limit of {MAX_LAYERS} (the deepest published "
                "CLIP towers have 48); the config file is corrupt or not a CLIP config",
            )
