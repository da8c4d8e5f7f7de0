"""clipforge's own checkpoint format: a folder with `clipforge_config.json` and
`clipforge_model.safetensors`.

The safetensors header also carries the config (metadata key `clipforge_config`), so the weights
file alone is self-describing when it is copied out of its folder. Both files are written to a
temporary name and renamed into place, so a crash mid-write never leaves a half-written checkpoint
where a good one was.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save

from ..atomic import atomic_write_bytes
from ..models.config import CLIPConfig, ConfigError, TextConfig
from ..safeio import read_text_file
from .formats import CheckpointError

CONFIG_NAME = "clipforge_config.json"
WEIGHTS_NAME = "clipforge_model.safetensors"
METADATA_KEY = "clipforge_config"
FORMAT_VERSION = 1
# `text.hf_tokenizer_name` in a written config: the tokenizer files lie in the folder of that config (a relative
# reference, so the folder can be moved or shared); readers turn it back into that folder's path.
THIS_FOLDER = "."
# Every tokenizer file a local tokenizer folder may hold (SigLIP's spiece.model, Gemma / XLM-R / BERT / NLLB ...).
LOCAL_TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "spiece.model", "tokenizer.model",
    "sentencepiece.bpe.model", "vocab.json", "merges.txt", "vocab.txt", "added_tokens.json",
)


def atomic_save_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None) -> None:
    """safetensors file written atomically (serialised in memory, then one atomic write)."""
    contiguous = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write_bytes(path, save(contiguous, metadata=metadata))


def config_json(config: CLIPConfig) -> str:
    """The clipforge config JSON for `config` (format name, version and model fields)."""
    return json.dumps({"format": "clipforge", "version": FORMAT_VERSION, "model": config.to_dict()}, indent=2)


def parse_config_json(text: str, source: str) -> CLIPConfig:
    """Parse a clipforge config JSON; a CheckpointError names `source` when it is not one."""
    from .formats import CheckpointError, reading_config

    with reading_config(source):
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("format") != "clipforge" or not isinstance(data.get("model"), dict):
            raise CheckpointError(
                f"{source}: not a clipforge config (expected keys 'format': 'clipforge' and 'model': {{...}})"
            )
        return CLIPConfig.from_dict(data["model"])


def is_local_tokenizer(name: str | None) -> bool:
    """Whether `hf_tokenizer_name` names a local folder (one a reader recorded), not a hub id nor THIS_FOLDER."""
    return bool(name) and name != THIS_FOLDER and Path(name).expanduser().is_dir()


def carry_tokenizer(text: TextConfig, folder: Path) -> TextConfig:
    """Copy the model's local tokenizer files into `folder` (size-capped reads, atomic writes) and point the text
    config at them with THIS_FOLDER, so a written config never names the source folder (moved or deleted later).
    Hub ids ("timm/ViT-B-16-SigLIP2") and configs without a local tokenizer are returned unchanged."""
    from .hf_chinese_clip import copy_tokenizer_files

    if not is_local_tokenizer(text.hf_tokenizer_name):
        return text
    if Path(text.hf_tokenizer_name).expanduser().resolve() != folder.resolve():
        if not copy_tokenizer_files(text, folder, LOCAL_TOKENIZER_FILES):
            return text  # a folder without tokenizer files: nothing to carry, the reference stays as given
    return dataclasses.replace(text, hf_tokenizer_name=THIS_FOLDER)


def resolve_tokenizer(config: CLIPConfig, folder: Path) -> CLIPConfig:
    """`config` with a relative `text.hf_tokenizer_name` (THIS_FOLDER, "./sub") made the path under `folder`, the
    folder its config was read from; other values unchanged."""
    name = config.text.hf_tokenizer_name
    if not name or not (name == THIS_FOLDER or name.startswith(("./", ".\\"))):
        return config
    return config.replace(text=dataclasses.replace(config.text, hf_tokenizer_name=str((folder / name).resolve())))


def write_native(config: CLIPConfig, state_dict: dict[str, torch.Tensor], folder: str | Path) -> Path:
    """Write a clipforge folder: safetensors weights (config in the header too), the model's local tokenizer files
    (carry_tokenizer) and the config JSON."""
    folder = Path(folder)
    config = config.replace(text=carry_tokenizer(config.text, folder))
    text = config_json(config)
    atomic_save_safetensors(state_dict, folder / WEIGHTS_NAME, metadata={METADATA_KEY: text})
    atomic_write_bytes(folder / CONFIG_NAME, (text + "\n").encode())
    return folder


def embedded_config(path: str | Path) -> CLIPConfig | None:
    """The config stored in a safetensors file's header by `write_native`, if any."""
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    text = metadata.get(METADATA_KEY)
    return resolve_tokenizer(parse_config_json(text, str(path)), Path(path).parent) if text else None


def config_text(path: Path) -> str:
    """A checkpoint's JSON config file as text, read under safeio's guards: a FIFO, a device or a file over 16 MiB is
    a CheckpointError naming it (a plain read_text blocks on a FIFO forever and reads /dev/zero until memory ends)."""
    try:
        return read_text_file(path, what=path.name)
    except OSError as exc:
        raise CheckpointError(str(exc)) from exc


def json_object(path: Path) -> dict:
    """A checkpoint's JSON config file (read as `config_text` does) parsed into a dict; anything but a JSON object
    is a ConfigError. Call it inside `formats.reading_config(path)`, which names the file in the error."""
    data = json.loads(config_text(path))
    if not isinstance(data, dict):
        raise ConfigError(f"expected a JSON object, got a {type(data).__name__}")
    return data


def read_native_dir(folder: str | Path) -> tuple[CLIPConfig, Path]:
    """The config of a clipforge folder and the path of its weights file."""
    folder = Path(folder)
    config = parse_config_json(config_text(folder / CONFIG_NAME), str(folder / CONFIG_NAME))
    return resolve_tokenizer(config, folder), folder / WEIGHTS_NAME
