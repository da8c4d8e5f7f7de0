"""Hugging Face transformers `ChineseCLIPModel` folders (and the reader / writer AltCLIP folders share).

Chinese-CLIP (Yang et al. 2022, "Chinese CLIP: Contrastive Vision-Language Pretraining in Chinese") pairs
CLIP's ViT image tower with a BERT text encoder (Chinese RoBERTa-wwm weights in BERT's layout): the text
feature is the last hidden state of the first ([CLS]) token, projected by a bias-free Linear. In clipforge
that is a `CLIP` whose vision tower is the CLIP ViT (same keys as a CLIPModel's vision part, weights/hf.py)
and whose text tower is an `HFTextTower` (models/hf_text.py) with `hf_config` model_type "bert",
`hf_pooler_type="cls_last_hidden_state_pooler"` and `hf_proj_type="linear"`.

A folder holds `config.json` (model_type "chinese_clip", with `text_config` / `vision_config`), the weights
and usually the tokenizer (BERT WordPiece `vocab.txt`), which `get_tokenizer` then reads from the folder.
Reference: transformers `models/chinese_clip/modeling_chinese_clip.py` and `configuration_chinese_clip.py`.

Writing (`write_hf_dir` -> `write_hf_text_tower_dir`) inverts the reader's key plan (hf.plan_to_hf) and copies the
tokenizer files of the folder the model was read from.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from ..models.clip import CLIP
from ..models.config import CLIPConfig, ConfigError, TextConfig
from . import hf
from .formats import CheckpointError, raise_on_mismatch, reading_config
from .hf_processor import read_preprocessor_config
from .native import config_text, json_object

MODEL_TYPE = "chinese_clip"

# transformers' ChineseCLIPTextConfig defaults (5.x), used for keys a config.json omits.
TEXT_DEFAULTS: dict[str, Any] = {
    "vocab_size": 30522,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
    "layer_norm_eps": 1e-12,
    "pad_token_id": 0,
}
# Architecture fields of the text encoder copied into `TextConfig.hf_config` (bookkeeping fields are dropped).
ENCODER_FIELDS = (*TEXT_DEFAULTS, "bos_token_id", "eos_token_id", "position_embedding_type")
# Files that make a folder a tokenizer source for `HFTokenizer` (fast tokenizer.json, BERT / XLM-R vocabularies).
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "sentencepiece.bpe.model")
# Buffers transformers registers (non-persistent now) that older checkpoints still carry.
IGNORED_HF_KEYS = (
    "vision_model.embeddings.position_ids",
    "text_model.embeddings.position_ids",
    "text_model.embeddings.token_type_ids",
    "text_model.roberta.embeddings.position_ids",
    "text_model.roberta.embeddings.token_type_ids",
)


def encoder_fields(tc: Mapping[str, Any], defaults: Mapping[str, Any], model_type: str, extra: tuple = ()) -> dict:
    """The text encoder's architecture fields (`TextConfig.hf_config`) from a config.json `text_config`."""
    fields: dict[str, Any] = {"model_type": model_type}
    for key in (*ENCODER_FIELDS, *extra):
        value = tc.get(key, defaults.get(key))
        if value is not None:
            fields[key] = value
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size"):
        value = fields.get(key)
        if type(value) is not int or value <= 0:
            raise ConfigError(f"text_config.{key}={value!r} is not a positive int")
    return fields


def _top_number(hf_config: Mapping[str, Any], key: str, default: Any, kind: type) -> Any:
    value = hf_config.get(key, default)
    ok = type(value) is int if kind is int else isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok:
        raise ConfigError(f"config.{key}={value!r} is not a valid {kind.__name__}")
    return value


def two_tower_config(hf_config: Mapping[str, Any], text: TextConfig) -> CLIPConfig:
    """CLIP's ViT (read as transformers' CLIPVisionConfig, same fields and defaults) + the given HF text tower."""
    vision = hf.config_from_hf({"model_type": "clip", "vision_config": hf._sub_config(hf_config, "vision_config")})
    return CLIPConfig(
        embed_dim=_top_number(hf_config, "projection_dim", hf.PROJECTION_DIM_DEFAULT, int),
        vision=vision.vision,
        text=text,
        init_logit_scale=float(_top_number(hf_config, "logit_scale_init_value", hf.LOGIT_SCALE_DEFAULT, float)),
    )


def config_from_hf_chinese_clip(hf_config: Mapping[str, Any]) -> CLIPConfig:
    """Translate a transformers `ChineseCLIPModel` config.json (as a dict) into a `CLIPConfig`."""
    if hf_config.get("model_type") != MODEL_TYPE:
        raise ConfigError(f"config.json has model_type={hf_config.get('model_type')!r}; expected {MODEL_TYPE!r}")
    tc = hf._sub_config(hf_config, "text_config")
    fields = encoder_fields(tc, TEXT_DEFAULTS, "bert")
    text = TextConfig(
        context_length=fields["max_position_embeddings"],
        hf_config=fields,
        hf_pooler_type="cls_last_hidden_state_pooler",  # last_hidden_state[:, 0]
        hf_proj_type="linear",  # text_projection: Linear(hidden_size, projection_dim, bias=False)
    )
    return two_tower_config(hf_config, text)


# ---------------------------------------------------------------------------------------------- key map


def _bert_text_key(cf: str) -> str | None:
    """clipforge text key -> ChineseCLIPModel key (the encoder is BertModel-named under text_model.)."""
    if cf.startswith("text.transformer."):
        return "text_model." + cf.removeprefix("text.transformer.")
    if cf == "text.proj.weight":
        return "text_projection.weight"
    return None


def _plan(cfg: CLIPConfig, text_key: Callable[[str], str | None]) -> list[tuple[str, str, str, torch.Size]]:
    """(clipforge key, HF key, how, clipforge shape) for every tensor of `cfg`'s CLIP; ConfigError on a gap."""
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in CLIP(cfg).state_dict().items()}
    plan = []
    for cf, hf_keys, how in hf._key_map(cfg):  # logit_scale and the CLIP ViT: CLIPModel's names
        if cf == "logit_scale" or cf.startswith("visual."):
            plan.append((cf, hf_keys, how, shapes[cf]))
    for cf, shape in shapes.items():
        if cf.startswith("text."):
            hf_key = text_key(cf)
            if hf_key is None:  # a text option this map does not know about: refuse rather than drop it
                raise ConfigError(f"no transformers name for clipforge parameter {cf!r} in this folder layout")
            plan.append((cf, (hf_key,), hf._COPY, shape))
    missing = set(shapes) - {cf for cf, *_ in plan}
    if missing:
        raise ConfigError(f"key map does not cover clipforge parameters {sorted(missing)}")
    return plan


def hf_two_tower_to_clipforge(
    sd: Mapping[str, torch.Tensor], cfg: CLIPConfig, text_key: Callable[[str], str | None], what: str
) -> dict[str, torch.Tensor]:
    """transformers state dict (CLIP ViT + HF text encoder) -> clipforge `CLIP` state dict (dtypes kept).

    Raises `CheckpointError` naming every missing or unexpected key and each shape that disagrees with `cfg`.
    """
    plan = _plan(cfg, text_key)
    expected = {h: hf._hf_shape(shape, how) for _, hf_keys, how, shape in plan for h in hf_keys}
    raise_on_mismatch(expected, sd, f"{what} state dict does not match the config", ignored=IGNORED_HF_KEYS)
    out: dict[str, torch.Tensor] = {}
    for cf, hf_keys, how, _ in plan:
        if how == hf._QKV:
            out[cf] = torch.cat([sd[h] for h in hf_keys], dim=0)  # in_proj rows: q, then k, then v
        elif how == hf._TRANSPOSE:
            out[cf] = sd[hf_keys[0]].T.contiguous()
        else:
            out[cf] = sd[hf_keys[0]]
    return out


def hf_chinese_clip_to_clipforge(sd: Mapping[str, torch.Tensor], cfg: CLIPConfig) -> dict[str, torch.Tensor]:
    """transformers `ChineseCLIPModel` state dict -> clipforge `CLIP` state dict for `cfg`."""
    return hf_two_tower_to_clipforge(sd, cfg, _bert_text_key, "HF ChineseCLIP")


# ---------------------------------------------------------------------------------------------- files


def _tokenizer_settings(folder: Path, text: TextConfig, positions: int) -> TextConfig:
    """Point the text config at the folder's tokenizer (when it has one) and cap the context length by it."""
    import dataclasses

    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        return text
    length = positions
    tok_config = folder / "tokenizer_config.json"
    if tok_config.exists():  # a FIFO / device there is refused by the safe read, naming it, not skipped
        with reading_config(tok_config):
            data = json.loads(config_text(tok_config))
            limit = data.get("model_max_length") if isinstance(data, dict) else None
            if type(limit) is int and 2 <= limit < length:  # transformers writes a huge sentinel when unset
                length = limit
    return dataclasses.replace(text, hf_tokenizer_name=str(folder.resolve()), context_length=length)


def with_folder_tokenizer(folder: Path, cfg: CLIPConfig) -> CLIPConfig:
    """`cfg` (an AltCLIPModel / ChineseCLIPModel config.json's) with the folder's tokenizer and the context length
    it allows: what load_model records, so get_tokenizer("local-dir:FOLDER") reads the same tokenizer."""
    from ..models.hf_text import HFTextTower

    # the text encoder's fields are checked as it is built (depth, heads, ...): an error there is config.json's
    with reading_config(folder / hf.CONFIG_NAME), torch.device("meta"):
        positions = HFTextTower(cfg.text, cfg.embed_dim).max_length
    return cfg.replace(text=_tokenizer_settings(folder, cfg.text, positions))


def read_hf_text_tower_dir(
    folder: Path, cfg: CLIPConfig, *, allow_unsafe_pickle: bool = False
) -> tuple[CLIPConfig, dict[str, torch.Tensor]]:
    """Read a ChineseCLIPModel or AltCLIPModel folder whose config.json gave `cfg` -> (config, clipforge state dict).

    The folder's tokenizer (when present) becomes the model's (`text.hf_tokenizer_name`), with the context length
    capped by its `model_max_length`; the image processor config, when present, gives `preprocess`.
    `allow_unsafe_pickle` is the opt-in for a trusted `pytorch_model.bin` that `weights_only` refuses.
    """
    cfg = with_folder_tokenizer(folder, cfg)
    with reading_config(folder / "preprocessor_config.json"):
        cfg = cfg.replace(preprocess=read_preprocessor_config(folder, cfg.vision.image_size))
    tensors = hf.read_hf_state_dict(folder, allow_unsafe_pickle=allow_unsafe_pickle)
    if cfg.text.hf_proj_type == "altclip":
        from .hf_altclip import hf_altclip_to_clipforge

        return cfg, hf_altclip_to_clipforge(tensors, cfg)
    return cfg, hf_chinese_clip_to_clipforge(tensors, cfg)


def read_hf_chinese_clip_dir(
    path: str | os.PathLike, *, allow_unsafe_pickle: bool = False
) -> tuple[CLIPConfig, dict[str, torch.Tensor]]:
    """Read a transformers `ChineseCLIPModel` folder -> (config, clipforge state dict) for `CLIP.load_state_dict`.

    `allow_unsafe_pickle` is the opt-in for a trusted `pytorch_model.bin` that `weights_only` refuses."""
    return read_two_tower_dir(path, config_from_hf_chinese_clip, "ChineseCLIPModel", allow_unsafe_pickle)


def read_two_tower_dir(
    path: str | os.PathLike,
    config_from: Callable[[dict], CLIPConfig],
    class_name: str,
    allow_unsafe_pickle: bool = False,
) -> tuple[CLIPConfig, dict[str, torch.Tensor]]:
    """A transformers CLIP-ViT + HF-text-encoder folder (AltCLIPModel, ChineseCLIPModel) -> (config, state dict):
    its config.json through `config_from`, then the weights through `read_hf_text_tower_dir`."""
    folder = Path(path)
    config_path = folder / hf.CONFIG_NAME
    if not config_path.exists():  # present but not a regular file (a FIFO): refused by the safe read, naming it
        raise CheckpointError(f"no {hf.CONFIG_NAME} in {folder}: a transformers {class_name} folder needs one")
    with reading_config(config_path):
        cfg = config_from(json_object(config_path))
    return read_hf_text_tower_dir(folder, cfg, allow_unsafe_pickle=allow_unsafe_pickle)


# ---------------------------------------------------------------------------------------------- writing

_TOKENIZER_MAX_BYTES = 64 << 20  # XLM-R's tokenizer.json is ~17 MB, a BERT vocab.txt well under 1 MB


def config_to_hf_two_tower(cfg: CLIPConfig, model_type: str, architecture: str) -> dict[str, Any]:
    """config.json of a transformers two-tower model (`model_type` "chinese_clip" / "altclip"): CLIP's ViT
    (CLIPVisionConfig's fields, as `two_tower_config` reads them) + the HF text encoder's stored fields."""
    vision = dict(hf.config_to_hf(cfg)["vision_config"], model_type=f"{model_type}_vision_model")
    text = {k: v for k, v in cfg.text.hf_config.items() if k != "model_type"}
    text["model_type"] = f"{model_type}_text_model"
    return {
        "architectures": [architecture],
        "model_type": model_type,
        "projection_dim": cfg.embed_dim,
        "logit_scale_init_value": cfg.init_logit_scale,
        "text_config": text,
        "vision_config": vision,
    }


def clipforge_to_hf_chinese_clip(sd: Mapping[str, torch.Tensor], cfg: CLIPConfig) -> dict[str, torch.Tensor]:
    """clipforge `CLIP` state dict -> transformers `ChineseCLIPModel` state dict: the reader's plan, inverted."""
    return hf.plan_to_hf(sd, _plan(cfg, _bert_text_key))


def _chinese_clip_refusal(cfg: CLIPConfig) -> str | None:
    t = cfg.text
    if not t.is_hf or t.hf_config.get("model_type") != "bert":
        return "its text tower is not a BERT encoder"
    if t.hf_pooler_type != "cls_last_hidden_state_pooler" or t.hf_proj_type != "linear":
        return (
            f"its text tower pools {t.hf_pooler_type!r} and projects {t.hf_proj_type!r}; ChineseCLIPModel takes the "
            "first token's last hidden state through a bias-free Linear"
        )
    return None


def copy_tokenizer_files(text: TextConfig, folder: Path, names: tuple[str, ...] | None = None) -> list[Path]:
    """Copy the tokenizer files of the folder the model was read from (`text.hf_tokenizer_name`, when it is a
    local folder) into `folder`, so the written folder tokenizes the same without the original; [] when none.
    `names` are the files looked for (default: those of an HF text encoder's tokenizer)."""
    from ..atomic import atomic_write_bytes
    from ..safeio import read_regular_file
    from .openclip_hftext import TOKENIZER_FILES as ALL_TOKENIZER_FILES

    source = Path(text.hf_tokenizer_name).expanduser() if text.hf_tokenizer_name else None
    if source is None or not source.is_dir() or source.resolve() == folder.resolve():
        return []
    written = []
    for name in names or ALL_TOKENIZER_FILES:
        if (source / name).is_file():
            data = read_regular_file(source / name, _TOKENIZER_MAX_BYTES, what=f"tokenizer file {name}")
            atomic_write_bytes(folder / name, data)
            written.append(folder / name)
    return written


def write_hf_text_tower_dir(model: Any, path: str | os.PathLike) -> Path:
    """Write a CLIP ViT + HF text encoder model as the transformers folder that holds it: `ChineseCLIPModel` (BERT,
    first-token pooling, bias-free Linear) or `AltCLIPModel` (XLM-R with AltCLIP's projection). config.json,
    model.safetensors (weights first, each file atomically), preprocessor_config.json and the tokenizer files of
    the folder the model came from. `ConfigError` naming why for any other HF text tower."""
    from ..atomic import atomic_write_bytes
    from .hf_altclip import altclip_refusal, clipforge_to_hf_altclip
    from .hf_processor import write_preprocessor_config
    from .native import atomic_save_safetensors

    cfg, sd = (model.config, model.state_dict()) if isinstance(model, CLIP) else model
    if cfg.text.hf_proj_type == "altclip":
        why, hf_config, tensors = altclip_refusal(cfg), None, None
        if why is None:
            hf_config = config_to_hf_two_tower(cfg, "altclip", "AltCLIPModel")
            tensors = clipforge_to_hf_altclip(sd, cfg)
    else:
        why = _chinese_clip_refusal(cfg)
        if why is None:
            hf_config = config_to_hf_two_tower(cfg, MODEL_TYPE, "ChineseCLIPModel")
            tensors = clipforge_to_hf_chinese_clip(sd, cfg)
    if why is not None:
        raise ConfigError(
            f"this model's text tower is a Hugging Face encoder that no transformers folder clipforge writes can hold "
            f"({why}; AltCLIPModel and ChineseCLIPModel are written); save it in the clipforge format "
            "(save_model(model, path), --to clipforge); open_clip's XLM-R CLIPs can also be written with "
            "format='openclip'"
        )
    dtypes = {t.dtype for t in tensors.values()}
    if len(dtypes) == 1:
        hf_config["dtype"] = str(dtypes.pop()).removeprefix("torch.")
    folder = Path(path)
    atomic_save_safetensors(tensors, folder / hf.SAFE_WEIGHTS_NAME, metadata={"format": "pt"})
    atomic_write_bytes(folder / hf.CONFIG_NAME, (json.dumps(hf_config, indent=2, sort_keys=True) + "\n").encode())
    if cfg.preprocess is not None:
        write_preprocessor_config(cfg, folder)
    copy_tokenizer_files(cfg.text, folder)
    return folder
