"""open_clip-compatible names: the migration layer, so that open_clip code runs with `import clipforge as open_clip`.

Everything here is a thin wrapper over clipforge's own functions, with open_clip's names, keywords and
return shapes; it is the only module that speaks open_clip's dialect:

    create_model_and_transforms(name, pretrained, ...) -> (model, train_transform, eval_transform)
    create_model_from_pretrained(name, pretrained, ..., return_transform=True) -> (model, preprocess)
    get_model_config(name) -> open_clip-style model_cfg dict (None for an unknown name)
    list_pretrained_tags_by_model(name), build_zero_shot_classifier(...) -> (D, C) class weights
    IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES (tuples; templates are callables)

`create_model`, `get_tokenizer`, `tokenize`, `list_models`, `list_pretrained` and the CLIP methods
(`encode_image`, `encode_text`, `lock_image_tower`, `lock_text_tower`, tuple-unpackable `forward`) are
clipforge's own and already accept open_clip's calls, `hf-hub:org/repo` and `local-dir:path` names included.

Keywords open_clip has but clipforge cannot honour are refused with the reason, never silently dropped:
`jit=True` (clipforge models are not TorchScript; use torch.compile), timm / Hugging Face tower weights
(`pretrained_image=True`, `pretrained_*_path`) and timm augmentations (`aug_cfg` with `use_timm` /
random erasing). Keywords that only select between open_clip's internal classes are accepted and have no
effect: `force_custom_text` (clipforge has one CLIP class), `pretrained_text` (no HF text towers),
`output_dict` (the model's output reads as a dict and unpacks as a tuple).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from itertools import islice
from typing import Any

import torch

from .factory import get_preprocess
from .models.clip import CLIP
from .models.config import ConfigError
from .models.registry import get_model_config as _architecture_config
from .weights.hub import HUB_PREFIX
from .weights.loading import LOCAL_DIR_PREFIX, apply_overrides, create_model, precision_dtype, read_config
from .weights.openclip import config_to_openclip
from .weights.pretrained import find_pretrained, tags_by_model
from .zeroshot import build_class_weights, get_templates, imagenet_classnames
from .zeroshot.templates import Template

IMAGENET_CLASSNAMES: tuple[str, ...] = tuple(imagenet_classnames())
# open_clip's template sets are tuples of callables; a bound `str.format` is exactly `lambda c: f"...{c}..."`.
OPENAI_IMAGENET_TEMPLATES: tuple[Callable[[str], str], ...] = tuple(t.format for t in get_templates("imagenet"))
SIMPLE_IMAGENET_TEMPLATES: tuple[Callable[[str], str], ...] = tuple(t.format for t in get_templates("simple"))

_SCHEMAS = (HUB_PREFIX, LOCAL_DIR_PREFIX)


def _refuse(condition: bool, message: str) -> None:
    if condition:
        raise ValueError(message)


def _model_overrides(model_kwargs: dict[str, Any], force_patch_dropout: float | None) -> tuple[dict[str, Any], bool]:
    """open_clip's constructor kwargs as clipforge config overrides (vision_cfg -> vision, text_cfg -> text)."""
    overrides = dict(model_kwargs)
    quick_gelu = bool(overrides.pop("quick_gelu", False))
    for theirs, ours in (("vision_cfg", "vision"), ("text_cfg", "text")):
        if theirs in overrides:
            overrides[ours] = {**overrides.get(ours, {}), **overrides.pop(theirs)}
    if force_patch_dropout is not None:
        overrides["vision"] = {**overrides.get("vision", {}), "patch_dropout": force_patch_dropout}
    return overrides, quick_gelu


def _resize_inputs(model: CLIP, image_size: int | None, context_length: int | None) -> CLIP:
    """A copy of `model` for another input size / context length, as open_clip's `force_image_size` and
    `force_context_length` give with loaded weights: the ViT position grid is resampled (the model's own
    bicubic resampling, `VisionTransformer._positions`) and text positions are truncated."""
    config, state = model.config, model.state_dict()
    if image_size is not None and image_size != config.vision.image_size:
        _refuse(
            config.vision.is_resnet,
            "force_image_size with loaded weights is supported for ViT image towers only (a ResNet's attention "
            "pool has a fixed grid); build the ResNet without weights to change its size",
        )
        with torch.no_grad():
            state["visual.positional_embedding"] = model.visual._positions(torch.Size((image_size, image_size)))
        config = config.replace(
            vision=dataclasses.replace(config.vision, image_size=image_size),
            preprocess=dataclasses.replace(config.preprocess, size=image_size),
        )
    if context_length is not None and context_length != config.text.context_length:
        _refuse(
            context_length > config.text.context_length,
            f"force_context_length={context_length} is longer than the loaded weights' "
            f"{config.text.context_length} positions; only shortening is supported",
        )
        state["text.positional_embedding"] = state["text.positional_embedding"][:context_length]
        config = config.replace(text=dataclasses.replace(config.text, context_length=context_length))
    if config is model.config:
        return model
    resized = CLIP(config).to(device=model.logit_scale.device, dtype=model.logit_scale.dtype)
    resized.load_state_dict(state, strict=True)
    return resized.train(model.training)


def _create(
    model_name: str,
    pretrained: str | None,
    *,
    load_weights: bool = True,
    precision: str = "fp32",
    device: str | torch.device = "cpu",
    jit: bool = False,
    force_quick_gelu: bool = False,
    force_custom_text: bool = False,
    force_patch_dropout: float | None = None,
    force_image_size: int | None = None,
    force_context_length: int | None = None,
    image_mean: Sequence[float] | None = None,
    image_std: Sequence[float] | None = None,
    image_interpolation: str | None = None,
    image_resize_mode: str | None = None,
    pretrained_image: bool = False,
    pretrained_text: bool = True,
    pretrained_image_path: str | None = None,
    pretrained_text_path: str | None = None,
    cache_dir: str | None = None,
    output_dict: bool | None = None,
    weights_only: bool = True,
    **model_kwargs: Any,
) -> CLIP:
    """open_clip's `create_model` keywords on top of clipforge's `create_model`."""
    del force_custom_text, pretrained_text, output_dict  # select open_clip classes only; see the module docstring
    _refuse(jit, "jit=True: clipforge models are not TorchScript-scripted; call torch.compile(model) instead")
    _refuse(
        pretrained_image or pretrained_image_path is not None or pretrained_text_path is not None,
        "pretrained_image / pretrained_image_path / pretrained_text_path load timm or Hugging Face tower weights, "
        "which clipforge's architectures do not use; load a whole CLIP checkpoint with pretrained= instead",
    )
    if isinstance(force_image_size, tuple | list):
        _refuse(len(set(force_image_size)) != 1, f"force_image_size={force_image_size}: only square sizes")
        force_image_size = int(force_image_size[0])
    overrides, quick_gelu = _model_overrides(model_kwargs, force_patch_dropout)
    options = dict(
        device=device,
        cache_dir=cache_dir,
        precision=precision,
        force_quick_gelu=force_quick_gelu or quick_gelu,
        allow_unsafe_pickle=not weights_only,
    )
    has_weights = load_weights and (pretrained is not None or model_name.startswith(_SCHEMAS))
    if has_weights:
        model = _resize_inputs(
            create_model(model_name, pretrained, **options, **overrides), force_image_size, force_context_length
        )
    else:
        size, length = force_image_size, force_context_length
        model = _create_without_weights(model_name, pretrained, size, length, options, overrides)
    changes = dict(mean=image_mean, std=image_std, interpolation=image_interpolation, resize_mode=image_resize_mode)
    changes = {k: (tuple(v) if isinstance(v, list) else v) for k, v in changes.items() if v is not None}
    if changes:
        model.config = model.config.replace(preprocess=dataclasses.replace(model.config.preprocess, **changes))
    return model


def _create_without_weights(name, pretrained, image_size, context_length, options, overrides) -> CLIP:
    """Random init (load_weights=False, or no weights named). A known tag or `hf-hub:` / `local-dir:` model
    still gives its architecture and preprocessing, as open_clip keeps them; only its config file is read."""
    if name.startswith(_SCHEMAS):
        config = read_config(name, cache_dir=options["cache_dir"])
    elif pretrained is not None and find_pretrained(name, pretrained) is not None:
        config = read_config(f"{name}:{pretrained}", cache_dir=options["cache_dir"])
    else:
        config = _architecture_config(name)
    if image_size is not None:
        overrides["vision"] = {**overrides.get("vision", {}), "image_size": image_size}
        overrides["preprocess"] = {**overrides.get("preprocess", {}), "size": image_size}
    if context_length is not None:
        overrides["text"] = {**overrides.get("text", {}), "context_length": context_length}
    model = CLIP(apply_overrides(config, overrides, options["force_quick_gelu"]))
    return model.to(device=options["device"], dtype=precision_dtype(options["precision"])).eval()


def _aug_options(aug_cfg: Any) -> dict[str, Any]:
    """open_clip's AugmentationCfg (dict or dataclass) as clipforge train-transform options."""
    if aug_cfg is None:
        return {}
    cfg = dict(aug_cfg) if isinstance(aug_cfg, dict) else dataclasses.asdict(aug_cfg)
    _refuse(
        bool(cfg.pop("use_timm", False)) or bool(cfg.pop("re_prob", None)) or bool(cfg.pop("re_count", None)),
        "aug_cfg: use_timm / re_prob / re_count select timm's augmentation pipeline, which clipforge does not "
        "provide; use scale, ratio, color_jitter (+ color_jitter_prob) and gray_scale_prob",
    )
    options: dict[str, Any] = {}
    for name in ("scale", "ratio"):  # open_clip's None means the default range
        value = cfg.pop(name, None)
        if value is not None:
            options[name] = tuple(value)
    jitter, jitter_prob = cfg.pop("color_jitter", None), cfg.pop("color_jitter_prob", None)
    if jitter_prob:  # open_clip applies jitter only with a probability and four strengths
        _refuse(jitter is None or len(jitter) != 4, "aug_cfg: color_jitter_prob needs color_jitter with 4 strengths")
        options.update(color_jitter=tuple(jitter), color_jitter_prob=float(jitter_prob))
    gray = cfg.pop("gray_scale_prob", None)
    if gray:
        options["grayscale_prob"] = float(gray)
    _refuse(bool(cfg), f"aug_cfg: unknown option(s) {sorted(cfg)}")
    return options


def create_model_and_transforms(
    model_name: str,
    pretrained: str | None = None,
    load_weights: bool = True,
    precision: str = "fp32",
    device: str | torch.device = "cpu",
    jit: bool = False,
    force_quick_gelu: bool = False,
    force_custom_text: bool = False,
    force_patch_dropout: float | None = None,
    force_image_size: int | tuple[int, int] | None = None,
    force_context_length: int | None = None,
    image_mean: Sequence[float] | None = None,
    image_std: Sequence[float] | None = None,
    image_interpolation: str | None = None,
    image_resize_mode: str | None = None,
    aug_cfg: Any = None,
    pretrained_image: bool = False,
    pretrained_text: bool = True,
    pretrained_image_path: str | None = None,
    pretrained_text_path: str | None = None,
    cache_dir: str | None = None,
    output_dict: bool | None = None,
    weights_only: bool = True,
    **model_kwargs: Any,
):
    """open_clip's `create_model_and_transforms`: (model, train transform, eval transform).

    `model_name` is an architecture (`pretrained`: a tag, file, folder or hub id) or a whole model
    (`hf-hub:org/repo`, `local-dir:path`). The transforms are `get_preprocess(model, train=True, ...)` and
    `get_preprocess(model)`; `aug_cfg` (dict or open_clip AugmentationCfg) sets the train augmentation.
    """
    train_options = _aug_options(aug_cfg)  # refuse bad augmentation options before downloading anything
    model = _create(
        model_name,
        pretrained,
        load_weights=load_weights,
        precision=precision,
        device=device,
        jit=jit,
        force_quick_gelu=force_quick_gelu,
        force_custom_text=force_custom_text,
        force_patch_dropout=force_patch_dropout,
        force_image_size=force_image_size,
        force_context_length=force_context_length,
        image_mean=image_mean,
        image_std=image_std,
        image_interpolation=image_interpolation,
        image_resize_mode=image_resize_mode,
        pretrained_image=pretrained_image,
        pretrained_text=pretrained_text,
        pretrained_image_path=pretrained_image_path,
        pretrained_text_path=pretrained_text_path,
        cache_dir=cache_dir,
        output_dict=output_dict,
        weights_only=weights_only,
        **model_kwargs,
    )
    return model, get_preprocess(model, train=True, **train_options), get_preprocess(model)


def create_model_from_pretrained(
    model_name: str,
    pretrained: str | None = None,
    precision: str = "fp32",
    device: str | torch.device = "cpu",
    jit: bool = False,
    force_quick_gelu: bool = False,
    force_custom_text: bool = False,
    force_image_size: int | tuple[int, int] | None = None,
    force_context_length: int | None = None,
    image_mean: Sequence[float] | None = None,
    image_std: Sequence[float] | None = None,
    image_interpolation: str | None = None,
    image_resize_mode: str | None = None,
    return_transform: bool = True,
    cache_dir: str | None = None,
    weights_only: bool = True,
    **model_kwargs: Any,
):
    """open_clip's `create_model_from_pretrained`: (model, eval transform), or the model alone with
    `return_transform=False`. Weights are required: a tag, file, folder or hub id, or an `hf-hub:` /
    `local-dir:` model name."""
    if pretrained is None and not model_name.startswith(_SCHEMAS):
        tags = tags_by_model(model_name)
        raise ValueError(
            f"create_model_from_pretrained({model_name!r}) needs weights: pass pretrained= (a tag: {tags or 'none'}, "
            "or a checkpoint file / folder / hub id) or name an 'hf-hub:org/repo' model"
        )
    model = _create(
        model_name,
        pretrained,
        precision=precision,
        device=device,
        jit=jit,
        force_quick_gelu=force_quick_gelu,
        force_custom_text=force_custom_text,
        force_image_size=force_image_size,
        force_context_length=force_context_length,
        image_mean=image_mean,
        image_std=image_std,
        image_interpolation=image_interpolation,
        image_resize_mode=image_resize_mode,
        cache_dir=cache_dir,
        weights_only=weights_only,
        **model_kwargs,
    )
    return (model, get_preprocess(model)) if return_transform else model


def get_model_config(model_name: str) -> dict[str, Any] | None:
    """open_clip's `get_model_config`: the `model_cfg` dict (embed_dim, vision_cfg, text_cfg, quick_gelu, ...)
    of an architecture or `hf-hub:` / `local-dir:` model; None for an unknown name, as in open_clip."""
    try:
        if model_name.startswith(_SCHEMAS):
            config = read_config(model_name)
        else:
            config = _architecture_config(model_name)
    except ConfigError:
        return None
    return config_to_openclip(config)["model_cfg"]


def list_pretrained_tags_by_model(model: str) -> list[str]:
    """open_clip's `list_pretrained_tags_by_model`: the tags `create_model(model, pretrained=tag)` accepts."""
    return tags_by_model(model)


def _batched(items: Sequence[str], size: int | None):
    it = iter(items)
    while batch := list(islice(it, size or len(items))):
        yield batch


def build_zero_shot_classifier(
    model: CLIP,
    tokenizer: Callable[[list[str]], torch.Tensor],
    classnames: Sequence[str],
    templates: Sequence[Template],
    num_classes_per_batch: int | None = 10,
    device: str | torch.device = "cpu",
    use_tqdm: bool = False,
) -> torch.Tensor:
    """open_clip's `build_zero_shot_classifier`: (embed_dim, num_classes) unit-norm class weights, the mean of
    each class's normalised prompt embeddings (clipforge's `build_class_weights`), `num_classes_per_batch`
    classes per text forward. Templates are `{}` strings or callables. Prompts run on the model's device;
    `device` is accepted for open_clip's signature and must be that device."""
    _refuse(not classnames, "build_zero_shot_classifier: no class names given")
    _refuse(not templates, "build_zero_shot_classifier: no templates given")
    model_device = next(model.parameters()).device
    _refuse(
        torch.device(device).type != model_device.type,
        f"build_zero_shot_classifier: device={device!r} but the model is on {model_device}; move the model there",
    )
    batches = _batched(list(classnames), num_classes_per_batch)
    if use_tqdm:
        from tqdm import tqdm

        per_batch = num_classes_per_batch or len(classnames)
        batches = tqdm(batches, total=-(-len(classnames) // per_batch), unit_scale=per_batch)
    templates = list(templates)
    columns = [build_class_weights(model, tokenizer, b, templates, len(b) * len(templates)) for b in batches]
    return torch.cat(columns, dim=1)  # (D, C)


__all__ = [
    "IMAGENET_CLASSNAMES",
    "OPENAI_IMAGENET_TEMPLATES",
    "SIMPLE_IMAGENET_TEMPLATES",
    "build_zero_shot_classifier",
    "create_model_and_transforms",
    "create_model_from_pretrained",
    "get_model_config",
    "list_pretrained_tags_by_model",
]
