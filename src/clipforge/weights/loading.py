"""One entry point for every checkpoint: `load_model`, `create_model`, `save_model`, `convert`.

Resolution order of `load_model(x)`:
1. `x` is a folder: clipforge (`clipforge_config.json`), OpenCLIP hub layout
   (`open_clip_config.json`) or Hugging Face `CLIPModel` (`config.json`).
2. `x` is a file: safetensors / pickle / OpenAI TorchScript, read without unpickling code. The
   architecture comes from the file's embedded clipforge config, an `open_clip_config.json` beside
   it, an explicit `arch=` name, or is inferred from tensor shapes.
3. `x` is `ARCH:TAG` from the pretrained table, or a hub id (`org/repo`, `hf-hub:org/repo`),
   downloaded through huggingface_hub and then read as in 1.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path
from typing import Any, Literal

import torch

from ..models.clip import CLIP
from ..models.config import CLIPConfig, ConfigError, PreprocessConfig
from ..models.long_context import merge_longclip_positions
from ..models.registry import get_model_config, with_quick_gelu
from . import families, hf, hf_processor, native, openclip, openclip_hftext
from .formats import (
    CheckpointConfigError,
    CheckpointError,
    detect_checkpoint_format,
    raise_on_mismatch,
    read_tensors,
    reading_config,
)
from .hf_siglip import is_siglip
from .hub import HUB_PREFIX, download_first, download_optional, offline_note
from .openai import config_from_openai_state_dict, openai_to_clipforge
from .pretrained import PretrainedWeights, find_pretrained, tags_for

SaveFormat = Literal["clipforge", "openclip", "hf"]
OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")


# ----------------------------------------------------------------------------- building


def _apply_overrides(config: CLIPConfig, overrides: dict[str, Any]) -> CLIPConfig:
    """Top-level CLIPConfig fields by name; tower fields as `vision={...}` / `text={...}` dicts."""
    if not overrides:
        return config
    data = config.to_dict()
    for key, value in overrides.items():
        if key in ("vision", "text", "preprocess") and isinstance(value, dict):
            data[key] = {**(data[key] or {}), **value}
        else:
            data[key] = value
    return CLIPConfig.from_dict(data)


def _place(model: CLIP, device: str | torch.device | None, dtype: torch.dtype | None) -> CLIP:
    if device is not None or dtype is not None:
        model = model.to(device=device, dtype=dtype)
    return model.eval()


def build_model(
    config: CLIPConfig,
    state_dict: dict[str, torch.Tensor] | None = None,
    source: str = "",
    *,
    check_finite: bool = True,
) -> CLIP:
    """A CLIP model for `config`, with `state_dict` loaded strictly (errors name the keys).

    The state dict is checked against the config before any real memory is allocated for the model (see
    `check_state_dict`): a config whose width would need tens of GB fails on the tensors' shapes, not in
    the allocator. `check_finite=False` loads weights holding NaN or inf (to inspect a diverged run).
    """
    if state_dict is None:
        return CLIP(config)
    check_state_dict(config, state_dict, source, check_finite=check_finite)
    model = CLIP(config)
    # Checkpoint dtypes (fp16 OpenAI files) are cast to the model's dtype by load_state_dict's copy_.
    model.load_state_dict(state_dict, strict=True)
    return model


def check_state_dict(
    config: CLIPConfig, state_dict: dict[str, torch.Tensor], source: str = "", *, check_finite: bool = True
) -> None:
    """Raise a CheckpointError unless `state_dict` fits a model built from `config`: the same keys and shapes,
    floating-point tensors where the model has them, and (with `check_finite`) no NaN or inf values.

    The expected shapes come from the model built on the meta device, which allocates nothing: the config of a
    file is as untrusted as its tensors. Integer tensors would be cast silently by load_state_dict, and NaN
    weights load without a word and turn every output into NaN, so both are refused here, naming the tensor.
    """
    what = source or "checkpoint"
    with torch.device("meta"):
        skeleton = CLIP(config)
    expected = skeleton.state_dict()
    raise_on_mismatch(
        {k: tuple(v.shape) for k, v in expected.items()},
        state_dict,
        f"{what} does not match the model configuration",
        hint="Check that the architecture (arch=...) or config file belongs to these weights.",
    )
    for key, tensor in state_dict.items():
        if expected[key].is_floating_point() and not tensor.is_floating_point():
            raise CheckpointError(
                f"{what}: tensor {key!r} has dtype {tensor.dtype}, but the model needs floating-point weights there; "
                "the file is not a CLIP checkpoint, or was quantized in a way clipforge does not read"
            )
    if check_finite:
        for key, tensor in state_dict.items():
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                bad = int((~torch.isfinite(tensor)).sum())
                raise CheckpointError(
                    f"{what}: tensor {key!r} has {bad} non-finite value(s) (NaN or inf) of {tensor.numel()}; the "
                    "weights are corrupt or come from a diverged training run, and every output would be NaN. "
                    "Pass check_finite=False (CLI: --allow-nonfinite-weights) to load them anyway"
                )


def load_state_dict_checked(
    model: CLIP, state_dict: dict[str, torch.Tensor], source: str, *, check_finite: bool = True
) -> None:
    """Load `state_dict` into `model`; missing, unexpected, mis-shaped, integer or non-finite tensors raise one
    error naming them."""
    check_state_dict(model.config, state_dict, source, check_finite=check_finite)
    model.load_state_dict(state_dict, strict=True)


# open_clip's `precision` values: "amp*" train in fp32 under autocast; the others cast the weights.
# open_clip's "fp16"/"bf16" keep norm layers and embeddings in fp32; clipforge models hold one dtype, so
# there they cast every weight, like "pure_fp16"/"pure_bf16".
PRECISIONS: dict[str, torch.dtype | None] = {
    "fp32": None,
    "amp": None,
    "amp_bf16": None,
    "amp_bfloat16": None,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
    "pure_fp16": torch.float16,
    "pure_bf16": torch.bfloat16,
}
LOCAL_DIR_PREFIX = "local-dir:"


def precision_dtype(precision: str | None, dtype: torch.dtype | None = None) -> torch.dtype | None:
    """The weight dtype for open_clip's `precision` name (None keeps fp32); refuses a conflicting `dtype`."""
    if precision is None:
        return dtype
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} is not one of {list(PRECISIONS)}")
    wanted = PRECISIONS[precision]
    if dtype is not None and dtype != (wanted or torch.float32):
        raise ValueError(f"precision={precision!r} and dtype={dtype} disagree; pass one of them")
    return wanted


def create_model(
    name: str,
    pretrained: str | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    cache_dir: str | Path | None = None,
    *,
    precision: str | None = None,
    force_quick_gelu: bool = False,
    allow_unsafe_pickle: bool = False,
    check_finite: bool = True,
    **overrides: Any,
) -> CLIP:
    """Build a named architecture, optionally with pretrained weights.

    `pretrained` is a tag from `list_pretrained()` for this architecture, or a path / hub id that
    `load_model` reads (its tensors must fit the architecture). `name` may also be a whole model:
    `hf-hub:org/repo` or `local-dir:/path` (open_clip's schemas) load config and weights from there, and
    `pretrained` is then ignored, as open_clip ignores it. `overrides` change config fields:
    top-level ones by name (`embed_dim=256`), tower fields as dicts (`vision={"patch_dropout": 0.5}`).
    `precision` takes open_clip's names ("fp32", "amp", "amp_bf16", "fp16", "bf16", "pure_fp16",
    "pure_bf16"); `force_quick_gelu` switches both towers to QuickGELU, for weights trained with it.
    `allow_unsafe_pickle` is `load_model`'s opt-in for trusted legacy pickle files; `check_finite=False`
    loads pretrained weights that hold NaN or inf (refused by default, naming the first such tensor).
    """
    dtype = precision_dtype(precision, dtype)
    if name.startswith((HUB_PREFIX, LOCAL_DIR_PREFIX)):
        if pretrained is not None:
            warnings.warn(f"pretrained={pretrained!r} is ignored: {name!r} names the weights itself", stacklevel=2)
        source = name.removeprefix(LOCAL_DIR_PREFIX)
        loaded, state_dict, where = read_checkpoint(
            source, cache_dir=cache_dir, allow_unsafe_pickle=allow_unsafe_pickle
        )
        config = apply_overrides(loaded, overrides, force_quick_gelu)
        return _place(build_model(config, state_dict, where, check_finite=check_finite), device, dtype)
    config = apply_overrides(get_model_config(name), overrides, force_quick_gelu)
    if pretrained is None:
        return _place(CLIP(config), device, dtype)
    entry = find_pretrained(name, pretrained)
    if entry is not None:
        config = apply_overrides(get_model_config(entry.arch), overrides, force_quick_gelu)
        loaded_cfg, state_dict, source = _download_pretrained(entry, cache_dir)
        # the tag's normalisation at the (possibly overridden) size the model takes
        config = config.replace(preprocess=dataclasses.replace(loaded_cfg.preprocess, size=config.vision.image_size))
        return _place(build_model(config, state_dict, source, check_finite=check_finite), device, dtype)
    if _looks_like_source(pretrained):
        _, state_dict, source = read_checkpoint(
            pretrained, arch=name, cache_dir=cache_dir, allow_unsafe_pickle=allow_unsafe_pickle
        )
        return _place(build_model(config, state_dict, source, check_finite=check_finite), device, dtype)
    known = tags_for(name)
    raise CheckpointError(
        f"pretrained={pretrained!r} is neither a known tag for {name!r} (known: {known or 'none'}) "
        "nor an existing file, folder or hub id"
    )


def apply_overrides(config: CLIPConfig, overrides: dict[str, Any], force_quick_gelu: bool = False) -> CLIPConfig:
    """`config` with `create_model`'s overrides and QuickGELU switch applied."""
    config = _apply_overrides(config, overrides)
    return with_quick_gelu(config) if force_quick_gelu else config


def load_model(
    path_or_id: str | Path,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    *,
    arch: str | None = None,
    allow_unsafe_pickle: bool = False,
    cache_dir: str | Path | None = None,
    revision: str | None = None,
    check_finite: bool = True,
) -> CLIP:
    """Load any supported checkpoint; the architecture comes from the checkpoint itself.

    `arch` names the architecture for a bare state dict whose activation cannot be read from its
    tensors (open_clip files trained with QuickGELU: pass e.g. `arch="ViT-B-32-quickgelu"`).
    `allow_unsafe_pickle=True` is the opt-in for trusted legacy pickles that `weights_only` refuses.
    `check_finite=False` loads weights holding NaN or inf, which are refused by default. Every failure to
    read or fit the checkpoint is a `CheckpointError` naming the file.
    """
    config, state_dict, source = read_checkpoint(
        path_or_id, arch=arch, allow_unsafe_pickle=allow_unsafe_pickle, cache_dir=cache_dir, revision=revision
    )
    return _place(build_model(config, state_dict, source, check_finite=check_finite), device, dtype)


# ----------------------------------------------------------------------------- reading


def _looks_like_source(value: str | Path) -> bool:
    text = str(value)
    return Path(text).exists() or text.startswith(HUB_PREFIX) or _is_hub_id(text)


def _is_hub_id(text: str) -> bool:
    parts = text.split("/")
    return len(parts) == 2 and all(parts) and not text.startswith((".", "/", "~")) and ":" not in text


def read_checkpoint(
    path_or_id: str | Path,
    *,
    arch: str | None = None,
    allow_unsafe_pickle: bool = False,
    cache_dir: str | Path | None = None,
    revision: str | None = None,
) -> tuple[CLIPConfig, dict[str, torch.Tensor], str]:
    """(config, clipforge-named state dict, description of the source) for any supported input.

    Every failure is a CheckpointError naming the source: the readers raise one for each problem they know,
    and anything else a crafted file provokes in a parser (a TypeError deep in a library, a RecursionError) is
    turned into one here, so that a caller never sees a traceback for a bad file.
    """
    try:
        return _read_checkpoint(path_or_id, arch, allow_unsafe_pickle, cache_dir, revision)
    except CheckpointError as exc:
        if str(path_or_id) in str(exc):
            raise
        raise type(exc)(f"{path_or_id}: {exc}") from exc  # a key-map error that does not say which file
    except ConfigError as exc:  # the file's own config (a user's overrides are applied later, outside)
        raise CheckpointConfigError(f"{path_or_id}: its model config is invalid: {exc}") from exc
    except _PARSER_ERRORS as exc:
        raise CheckpointError(
            f"{path_or_id}: cannot read this checkpoint ({type(exc).__name__}: {str(exc)[:300]}); the file is "
            "corrupt or not a CLIP checkpoint"
        ) from exc


# What a malformed file can make a parser raise besides our own errors (OSError, e.g. a hub download failing,
# passes through: it is not the file's fault).
_PARSER_ERRORS = (
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
    RuntimeError,
    RecursionError,
    OverflowError,
    MemoryError,
    EOFError,
    UnicodeDecodeError,
)


def _read_checkpoint(path_or_id, arch, allow_unsafe_pickle, cache_dir, revision):
    text = str(path_or_id)
    path = Path(text).expanduser()
    if path.is_dir():
        return _read_dir(path, arch, allow_unsafe_pickle)
    if path.exists():
        return _read_file(path, arch, allow_unsafe_pickle)
    if ":" in text and not text.startswith(HUB_PREFIX):
        name, tag = text.rsplit(":", 1)
        entry = find_pretrained(name, tag)
        if entry is None:
            raise CheckpointError(
                f"{text!r}: no such file, and {tag!r} is not a known pretrained tag for {name!r} "
                f"(known tags: {tags_for(name) or 'none'}; see clipforge.list_pretrained())"
            )
        return _download_pretrained(entry, cache_dir)
    if text.startswith(HUB_PREFIX) or _is_hub_id(text):
        repo = text.removeprefix(HUB_PREFIX)
        return _read_hub_repo(repo, arch, allow_unsafe_pickle, cache_dir, revision)
    raise CheckpointError(
        f"{text!r} is not an existing file or folder, an ARCH:TAG pretrained name, or a hub id (org/repo)"
    )


def _read_dir(folder: Path, arch: str | None, allow_unsafe_pickle: bool):
    if (folder / native.CONFIG_NAME).exists():
        config, weights = native.read_native_dir(folder)
        _require(weights, folder, [native.WEIGHTS_NAME])
        return config, read_tensors(weights), str(folder)
    if (folder / openclip.CONFIG_NAME).exists():
        candidates = [openclip.SAFE_WEIGHTS_NAME, openclip.PICKLE_WEIGHTS_NAME]
        weights = next((folder / c for c in candidates if (folder / c).exists()), None)
        _require(weights, folder, candidates)
        return _read_file(weights, arch, allow_unsafe_pickle)
    if (folder / "config.json").exists():
        families.refuse_hf_config_file(folder / "config.json")  # BLIP, ALIGN, SigLIP 2, ...: named, not mis-read
        config, state_dict = hf.read_hf_dir(folder, allow_unsafe_pickle=allow_unsafe_pickle)
        return config, state_dict, str(folder)
    raise CheckpointError(
        f"{folder} is a folder but holds no known checkpoint layout: expected {native.CONFIG_NAME} (clipforge), "
        f"{openclip.CONFIG_NAME} (OpenCLIP hub layout) or config.json (Hugging Face CLIPModel)"
    )


def _openclip_json_config(path: Path) -> CLIPConfig:
    with reading_config(path):
        data = native.json_object(path)
        model_cfg, preprocess_cfg = data.get("model_cfg", data), data.get("preprocess_cfg")
        families.refuse_openclip_config(model_cfg, str(path))  # CoCa, MobileCLIP
        for name, section in (("model_cfg", model_cfg), ("model_cfg.vision_cfg", model_cfg.get("vision_cfg", {}))):
            if not isinstance(section, dict):
                raise ConfigError(f"{name} must be a JSON object, got a {type(section).__name__}")
        for name in ("model_cfg.text_cfg", "preprocess_cfg"):
            section = model_cfg.get("text_cfg", {}) if name == "model_cfg.text_cfg" else preprocess_cfg
            if section is not None and not isinstance(section, dict):
                raise ConfigError(f"{name} must be a JSON object, got a {type(section).__name__}")
        hf_text = None
        if isinstance(model_cfg.get("text_cfg"), dict) and model_cfg["text_cfg"].get("hf_model_name"):
            hf_text, _ = openclip_hftext.find_hf_text_config(data, path.parent)
        config = openclip.config_from_openclip(model_cfg, preprocess_cfg, hf_text)
        if config.text.is_hf and openclip_hftext.has_tokenizer(path.parent):  # open_clip's hub folders carry it
            config = config.replace(text=dataclasses.replace(config.text, hf_tokenizer_name=str(path.parent.resolve())))
        return native.resolve_tokenizer(config, path.parent)  # "." (native.THIS_FOLDER): this folder's files


def _config_in_dir(folder: Path) -> CLIPConfig | None:
    """The model config a checkpoint folder declares, without reading its weights; None when it has none."""
    if (folder / native.CONFIG_NAME).exists():
        return native.read_native_dir(folder)[0]
    if (folder / openclip.CONFIG_NAME).exists():
        return _openclip_json_config(folder / openclip.CONFIG_NAME)
    if (folder / hf.CONFIG_NAME).exists():
        config = hf.read_hf_config(folder / hf.CONFIG_NAME)
        if config.text.is_hf:  # AltCLIPModel / ChineseCLIPModel: the folder's own tokenizer, as load_model reads it
            from .hf_chinese_clip import with_folder_tokenizer

            config = with_folder_tokenizer(folder, config)
        return config
    return None


def read_config(
    source: str | Path, cache_dir: str | Path | None = None, revision: str | None = None
) -> CLIPConfig:
    """The config of a checkpoint folder, `hf-hub:org/repo` / `local-dir:path`, or `ARCH:TAG`, downloading
    only the config file: what a tokenizer or preprocessing needs, without the weights."""
    text = str(source)
    if text.startswith(LOCAL_DIR_PREFIX) or Path(text).expanduser().is_dir():
        folder = Path(text.removeprefix(LOCAL_DIR_PREFIX)).expanduser()
        config = _config_in_dir(folder) if folder.is_dir() else None
        if config is None:
            raise CheckpointError(
                f"{folder}: no {native.CONFIG_NAME}, {openclip.CONFIG_NAME} or config.json to read a model config from"
            )
        return config
    if ":" in text and not text.startswith(HUB_PREFIX):
        name, tag = text.rsplit(":", 1)
        entry = find_pretrained(name, tag)
        if entry is None:
            raise CheckpointError(f"{text!r}: {tag!r} is not a known pretrained tag for {name!r}")
        base = get_model_config(entry.arch)
        return base.replace(preprocess=_entry_preprocess(entry, base))
    repo = text.removeprefix(HUB_PREFIX)
    if not _is_hub_id(repo):
        raise CheckpointError(f"{text!r} is not a folder, local-dir:PATH, ARCH:TAG or hub id (hf-hub:org/repo)")
    for config_name in (native.CONFIG_NAME, openclip.CONFIG_NAME, hf.CONFIG_NAME):
        path = download_optional(repo, config_name, revision=revision, cache=cache_dir)
        if path is not None:
            return _hub_tokenizer(_config_in_dir(path.parent), path.parent, repo)
    raise CheckpointError(
        f"hub model {repo}: none of {native.CONFIG_NAME}, {openclip.CONFIG_NAME} or config.json could be found "
        f"({offline_note() or 'not a CLIP repository, or offline without a cached copy'})"
    )


def _require(weights: Path | None, folder: Path, names: list[str]) -> None:
    if weights is None or not weights.exists():
        raise CheckpointError(f"{folder}: config found but no weights file; expected one of {names}")


def _read_file(path: Path, arch: str | None, allow_unsafe_pickle: bool):
    fmt = detect_checkpoint_format(path)
    if fmt == "npz":  # a big_vision SigLIP checkpoint: its architecture is read from the arrays' shapes
        from .bigvision import read_big_vision_npz

        return (*read_big_vision_npz(path), str(path))
    if fmt == "safetensors":
        embedded = native.embedded_config(path)
        if embedded is not None:
            return embedded, read_tensors(path), str(path)
    tensors = read_tensors(path, allow_unsafe_pickle=allow_unsafe_pickle)
    families.refuse_state_dict(tensors, str(path))  # CoCa, MobileCLIP, BLIP, ALIGN, ...: named, not mis-read
    if any(k.startswith(("vision_model.", "text_model.")) for k in tensors):
        if (path.parent / "config.json").exists():
            config, state_dict = hf.read_hf_dir(path.parent, allow_unsafe_pickle=allow_unsafe_pickle)
            return config, state_dict, str(path)
        raise CheckpointError(
            f"{path} holds Hugging Face CLIPModel weights; load the folder that also has its config.json"
        )
    from_openai = fmt == "torchscript" or "input_resolution" in tensors
    state_dict = openai_to_clipforge(tensors) if from_openai else _to_clipforge_names(tensors)
    # Long-CLIP's files keep a second, fine-tuned table for positions >= 20: fold it into one (248 positions).
    state_dict = merge_longclip_positions(state_dict, prefix="text.")
    sidecar = path.parent / openclip.CONFIG_NAME
    if arch is not None:
        config = get_model_config(arch)
    elif sidecar.exists():
        config = _openclip_json_config(sidecar)
    else:
        config = _infer_config(state_dict, from_openai, path)
    return config, state_dict, str(path)


def _to_clipforge_names(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    tensors = {k: v for k, v in tensors.items() if k not in OPENAI_EXTRA_KEYS}
    return openclip_hftext.clean_hf_text_state_dict(openclip.openclip_to_clipforge_keys(tensors))


def _infer_config(state_dict: dict[str, torch.Tensor], from_openai: bool, path: Path) -> CLIPConfig:
    """Shape-based inference; OpenAI's own files are known to use QuickGELU, others cannot tell."""
    if any(k.startswith("visual.attn_pool") or k.startswith("text.text_projection.") for k in state_dict):
        raise CheckpointError(
            f"{path}: this checkpoint's architecture cannot be inferred from its tensors alone "
            "(attentional pooler / projection bias); pass arch=... or keep its open_clip_config.json beside it"
        )
    config = config_from_openai_state_dict(openclip.clipforge_to_openclip_keys(state_dict))
    if not from_openai:
        config = config.replace(
            vision=dataclasses.replace(config.vision, act="gelu"), text=dataclasses.replace(config.text, act="gelu")
        )
        warnings.warn(
            f"{path}: architecture inferred from tensor shapes, assuming GELU activations and width/64 attention "
            "heads (OpenAI's rule); neither can be read from weights. Pass arch=NAME (e.g. 'ViT-B-32-quickgelu') "
            "or keep the checkpoint's open_clip_config.json beside it if that is wrong.",
            stacklevel=4,
        )
    if "logit_bias" in state_dict and config.init_logit_bias is None:
        config = config.replace(init_logit_bias=float(state_dict["logit_bias"]))
    return config


def _download_pretrained(entry: PretrainedWeights, cache_dir) -> tuple[CLIPConfig, dict[str, torch.Tensor], str]:
    what = f"pretrained {entry.arch}:{entry.tag}"
    weights = download_first(
        entry.hub_id, [openclip.SAFE_WEIGHTS_NAME, openclip.PICKLE_WEIGHTS_NAME], what=what, cache=cache_dir
    )
    tensors = read_tensors(weights)
    base = get_model_config(entry.arch)
    config = base.replace(preprocess=_entry_preprocess(entry, base))
    return config, _to_clipforge_names(tensors), f"{what} ({weights})"


def _entry_preprocess(entry: PretrainedWeights, base: CLIPConfig) -> PreprocessConfig:
    return PreprocessConfig(
        size=base.vision.image_size,
        mean=entry.mean,
        std=entry.std,
        interpolation=entry.interpolation,
        resize_mode=entry.resize_mode,
    )


def _hub_tokenizer(config: CLIPConfig, snapshot: Path, repo: str) -> CLIPConfig:
    """A hub config whose tokenizer is "." (the files pushed beside it, native.THIS_FOLDER) names the repository
    instead of the snapshot folder, which holds only what was downloaded: get_tokenizer fetches the tokenizer files
    from `repo` through weights/hub.py (cache, HF_HUB_OFFLINE respected)."""
    name = config.text.hf_tokenizer_name
    fetched = any((snapshot / f).is_file() for f in ("tokenizer.json", "spiece.model"))  # a load that fetched them
    if name is None or name != str(snapshot.resolve()) or fetched:
        return config
    return config.replace(text=dataclasses.replace(config.text, hf_tokenizer_name=repo))


def _read_hub_repo(repo: str, arch, allow_unsafe_pickle, cache_dir, revision):
    """A hub repository in any of the three folder layouts, fetched file by file."""
    for config_name, weight_names in (
        (native.CONFIG_NAME, [native.WEIGHTS_NAME]),
        (openclip.CONFIG_NAME, [openclip.SAFE_WEIGHTS_NAME, openclip.PICKLE_WEIGHTS_NAME]),
        ("config.json", ["model.safetensors", "pytorch_model.bin"]),
    ):
        config_path = download_optional(repo, config_name, revision=revision, cache=cache_dir)
        if config_path is None:
            continue
        weights = download_first(repo, weight_names, what=f"hub model {repo}", revision=revision, cache=cache_dir)
        if config_name == "config.json":  # the HF layout keeps its image preprocessing in a file of its own
            download_optional(repo, hf_processor.PREPROCESSOR_NAME, revision=revision, cache=cache_dir)
        if weights.parent != config_path.parent:  # pragma: no cover - huggingface_hub keeps one snapshot folder
            raise CheckpointError(f"hub model {repo}: config and weights landed in different snapshot folders")
        config, state_dict, source = _read_dir(config_path.parent, arch, allow_unsafe_pickle)
        return _hub_tokenizer(config, config_path.parent, repo), state_dict, source
    raise CheckpointError(
        f"hub model {repo}: none of {native.CONFIG_NAME}, {openclip.CONFIG_NAME} or config.json could be found "
        f"({offline_note() or 'not a CLIP repository, or offline without a cached copy'})"
    )


# ----------------------------------------------------------------------------- writing


def save_model(model: CLIP, path: str | Path, format: SaveFormat = "clipforge") -> Path:
    """Write `model` to folder `path` as clipforge (default), OpenCLIP hub layout, or HF `CLIPModel`."""
    families.check_writable(model.config, format)  # refuse before writing a folder that would not load
    if getattr(model.visual, "reparameterized", False):  # a fused FastViT: no checkpoint layout holds it
        raise CheckpointError(
            "this model's FastViT image tower was reparameterised (model.visual.reparameterize(): the inference "
            "form, branches and BatchNorms folded), which no checkpoint format holds; save the training-form model "
            "and call reparameterize() after loading it"
        )
    folder = Path(path)
    state_dict = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if format == "clipforge":
        return native.write_native(model.config, state_dict, folder)
    if format == "openclip":
        native.atomic_save_safetensors(
            openclip.openclip_state_dict(model.config, state_dict),
            folder / openclip.SAFE_WEIGHTS_NAME,
            None,
        )
        # the tokenizer files travel with the folder; its config names them relatively (native.THIS_FOLDER)
        cfg = openclip.config_to_openclip(model.config.replace(text=native.carry_tokenizer(model.config.text, folder)))
        native.atomic_write_bytes(folder / openclip.CONFIG_NAME, (json.dumps(cfg, indent=2) + "\n").encode())
        return folder
    if format == "hf":
        hf.write_hf_dir((model.config, state_dict), folder)
        if is_siglip(model.config) or model.config.text.is_hf:
            return folder  # SiglipModel / AltCLIPModel / ChineseCLIPModel: the checkpoint's own tokenizer, not CLIP's
        # CLIPProcessor / pipeline("zero-shot-image-classification") also need the image processor and tokenizer.
        hf_processor.write_processor_files(model.config, folder)
        return folder
    raise ValueError(f"unknown save format {format!r}; expected 'clipforge', 'openclip' or 'hf'")


def convert(source: str | Path, destination: str | Path, format: SaveFormat = "clipforge", **load_kwargs) -> Path:
    """Read any supported checkpoint and write it in `format` (tensors copied exactly, fp32 kept as is)."""
    check_finite = load_kwargs.pop("check_finite", True)
    config, state_dict, src = read_checkpoint(source, **load_kwargs)
    model = build_model(config, state_dict, src, check_finite=check_finite)
    return save_model(model, destination, format)


__all__ = [
    "CheckpointError",
    "apply_overrides",
    "ConfigError",
    "build_model",
    "check_state_dict",
    "convert",
    "create_model",
    "load_model",
    "precision_dtype",
    "read_checkpoint",
    "read_config",
    "save_model",
]
