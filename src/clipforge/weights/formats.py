"""Checkpoint files: detect their format and read their tensors safely.

Every public CLIP checkpoint (Radford et al. 2021 and its reproductions) comes as one of three
containers: safetensors (OpenCLIP hub, Hugging Face, clipforge), a pickled `torch.save` file
(`.bin` / `.pt` training checkpoints) or an OpenAI TorchScript archive (the `.pt` files of
openai/CLIP's `clip.load`). This file owns telling them apart and reading them without running
code from the file: safetensors holds no code; pickles go through `torch.load(weights_only=True)`
unless the caller opts in with `allow_unsafe_pickle=True`; TorchScript archives are read by the
restricted unpickler in `torchscript.py`. Key names are left as stored (apart from training
wrappers); the per-format key maps live in `openai.py`, `openclip.py` and `hf.py`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import pickle
import re
import sys
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import torch

from ..models.config import ConfigError

CheckpointFormat = Literal["safetensors", "torchscript", "pickle", "npz"]

# Dicts that training code wraps a state dict in: {"state_dict": ...} (Lightning, many trainers),
# {"model": ...} (DeiT/timm-style checkpoints), {"module": ...} (DeepSpeed).
_WRAPPER_KEYS = ("state_dict", "model", "module")
_DDP_PREFIX = "module."
_MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024


class CheckpointError(ValueError):
    """A checkpoint cannot be read or does not fit: missing, corrupt, unsafe, or the wrong architecture.

    Every failure to read a checkpoint is one (tests/weights/test_bad_checkpoints.py runs a corpus of broken
    and malicious files through the loaders to hold this), so a caller catches one type and the CLI prints
    one line with exit code 4.
    """


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint refused because reading it would run code from the file (a pickle naming arbitrary globals)."""


class CheckpointConfigError(CheckpointError, ConfigError):
    """A checkpoint's own config (JSON beside or inside it) has a bad field: both a CheckpointError and a
    ConfigError, so callers that catch either keep working; the message names the file and the field."""


@contextlib.contextmanager
def reading_config(source: str | os.PathLike) -> Iterator[None]:
    """Turn any error met while parsing the config file `source` into a CheckpointConfigError naming it.

    A config written by hand or by another tool can be malformed JSON, hold a list where an object belongs or a
    string where a number does; the translators then fail with ConfigError, TypeError, AttributeError, ...
    The user needs to know which file is wrong, and the CLI needs one error type.
    """
    try:
        yield
    except CheckpointError:
        raise
    except json.JSONDecodeError as exc:
        raise CheckpointConfigError(f"{source}: config is not valid JSON ({exc})") from exc
    except ConfigError as exc:
        raise CheckpointConfigError(f"{source}: {exc}") from exc
    except (TypeError, ValueError, AttributeError, KeyError, IndexError, RecursionError, OverflowError) as exc:
        raise CheckpointConfigError(
            f"{source}: a config field has the wrong type or value ({type(exc).__name__}: {exc})"
        ) from exc


def _shortened(items: list[str], limit: int) -> str:
    shown = "; ".join(items[:limit])
    return shown + (f" (and {len(items) - limit} more)" if len(items) > limit else "")


def raise_on_mismatch(
    expected: Mapping[str, tuple[int, ...]],
    tensors: Mapping[str, torch.Tensor],
    what: str,
    *,
    ignored: tuple[str, ...] = (),
    hint: str = "",
    limit: int = 6,
) -> None:
    """Raise a CheckpointError listing shape mismatches, missing and unexpected keys, if there are any.

    One wording for every format, so a user reads the same kind of message whichever file they load:
    `'key' has shape (a, b), expected (c, d)`.
    """
    wrong = [
        f"{key!r} has shape {tuple(tensors[key].shape)}, expected {tuple(shape)}"
        for key, shape in expected.items()
        if key in tensors and tuple(tensors[key].shape) != tuple(shape)
    ]
    missing = [repr(k) for k in sorted(set(expected) - set(tensors))]
    unexpected = [repr(k) for k in sorted(set(tensors) - set(expected) - set(ignored))]
    problems = []
    if wrong:
        problems.append(f"{len(wrong)} shape mismatch(es): " + _shortened(wrong, limit))
    if missing:
        problems.append(f"{len(missing)} missing key(s): " + _shortened(missing, limit))
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): " + _shortened(unexpected, limit))
    if problems:
        raise CheckpointError(f"{what}: " + " | ".join(problems) + (f". {hint}" if hint else ""))


def _corrupt(path: Path, why: str) -> CheckpointError:
    return CheckpointError(
        f"{path}: the checkpoint file is corrupt or truncated ({why}); re-download it (or re-save it) and try again"
    )


def _directory_error(path: Path) -> CheckpointError:
    return CheckpointError(
        f"{path} is a directory, not a checkpoint file. Model directories are read by clipforge.load_model in "
        "three layouts: a clipforge directory (clipforge_config.json + clipforge_model.safetensors), an open_clip "
        "hub directory (open_clip_config.json + open_clip_model.safetensors or open_clip_pytorch_model.bin), or a "
        "Hugging Face CLIPModel directory (config.json + model.safetensors or pytorch_model.bin). To read tensors "
        "here, pass the weights file inside the directory."
    )


# safetensors dtype names -> bytes per element (the format's spec; F8 variants are one byte).
_SAFETENSORS_ITEMSIZE = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E4M3FNUZ": 1, "F8_E5M2": 1, "F8_E5M2FNUZ": 1, "E8M0": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
    "C64": 8,
}


def _is_count(value: Any) -> bool:
    return type(value) is int and value >= 0


def _safetensors_header_problem(header: Any) -> tuple[str | None, int]:
    """(why the parsed header is not a valid safetensors header or None, end of the data it describes).

    Checked here rather than left to the safetensors library, whose errors (unknown dtype, negative or
    overlapping offsets) are not CheckpointErrors and whose messages do not name the tensor.
    """
    if not isinstance(header, dict):
        return f"the header is a JSON {type(header).__name__}, not an object", 0
    spans = []
    for name, entry in header.items():
        if name == "__metadata__":
            if not isinstance(entry, dict) or not all(isinstance(v, str) for v in entry.values()):
                return "__metadata__ must map names to strings", 0
            continue
        if not isinstance(entry, dict):
            return f"tensor {name!r}: entry is a JSON {type(entry).__name__}, not an object", 0
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if dtype not in _SAFETENSORS_ITEMSIZE:
            return f"tensor {name!r} has unknown dtype {dtype!r}", 0
        if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
            return f"tensor {name!r} has shape {shape!r}; expected a list of non-negative integers", 0
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(o) for o in offsets)):
            return f"tensor {name!r} has data_offsets {offsets!r}; expected two non-negative integers", 0
        begin, end = offsets
        if end - begin != math.prod(shape) * _SAFETENSORS_ITEMSIZE[dtype]:
            return f"tensor {name!r}: data_offsets [{begin}, {end}] do not hold a {dtype} tensor of shape {shape}", 0
        spans.append((begin, end, name))
    spans.sort()
    for (_, end_a, a), (begin_b, _, b) in zip(spans, spans[1:]):
        if begin_b < end_a:
            return f"the data of tensors {a!r} and {b!r} overlap", 0
    return None, max((end for _, end, _ in spans), default=0)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a valid JSON value")


def _safetensors_problem(path: Path, head: bytes, size: int) -> str | None:
    """None when the file is a complete, well-formed safetensors file; else why not. Caller checked the '{'."""
    header_len = int.from_bytes(head[:8], "little")
    if header_len > _MAX_SAFETENSORS_HEADER:
        return f"a safetensors header length of {header_len} bytes is implausible"
    if 8 + header_len > size:
        return f"the safetensors header ({header_len} bytes) runs past the end of the {size}-byte file"
    with open(path, "rb") as f:
        f.seek(8)
        raw = f.read(header_len)
    try:
        header = json.loads(raw, parse_constant=_reject_constant)
    except RecursionError:
        return "the safetensors header is nested too deeply to be a tensor table"
    except (ValueError, UnicodeDecodeError) as exc:
        return f"the safetensors header is not valid JSON ({exc})"
    problem, end = _safetensors_header_problem(header)
    if problem is not None:
        return f"the safetensors header is not valid: {problem}"
    if 8 + header_len + end > size:
        return f"the tensors need {8 + header_len + end} bytes but the file has {size}"
    return None


def detect_checkpoint_format(path: str | os.PathLike) -> CheckpointFormat:
    """The format of a checkpoint file from its content: "safetensors", "torchscript", "pickle" or "npz" (big_vision).

    Raises `CheckpointError` for a missing path, a directory (listing the directory layouts the
    loaders accept), and empty, truncated or unrecognisable files.
    """
    path = Path(path)
    if path.is_dir():
        raise _directory_error(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint file not found: {path}")
    size = path.stat().st_size
    if size == 0:
        raise _corrupt(path, "the file is empty")
    with open(path, "rb") as f:
        head = f.read(9)
    if head[:2] == b"PK":
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError) as exc:
            raise _corrupt(path, f"a zip archive whose directory cannot be read: {exc}") from exc
        from .torchscript import is_torchscript_archive

        if is_torchscript_archive(names):
            return "torchscript"
        if any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
            return "pickle"
        from .bigvision import is_big_vision_names

        if is_big_vision_names(names):  # a big_vision (JAX) SigLIP checkpoint: numpy arrays, no pickle
            return "npz"
        raise CheckpointError(f"{path}: a zip archive, but not a PyTorch checkpoint (it has no data.pkl record)")
    if len(head) == 9 and head[8:9] == b"{":
        problem = _safetensors_problem(path, head, size)
        if problem is not None:
            raise _corrupt(path, problem)
        return "safetensors"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:  # pickle PROTO opcode: legacy torch.save
        return "pickle"
    hint = f" although its name ends in {path.suffix}" if path.suffix else ""
    raise _corrupt(path, f"its content is not safetensors, a PyTorch zip archive or a pickle{hint}")


def _refused_global(message: str) -> str | None:
    """The global torch's weights_only unpickler refused, from its message (two phrasings in torch 2.x)."""
    match = re.search(r"GLOBAL ([\w.]+)", message)
    return match.group(1) if match else None


def _weights_only_reason(message: str) -> str:
    match = re.search(r"WeightsUnpickler error:\s*([^\n]+)", message)  # the reason may start a line below
    if match:
        return match.group(1).strip()
    lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith(("Weights only load failed", "Check the documentation"))]
    return (useful or lines or ["unreadable pickle"])[0]


def _is_cut_name(qualified: str) -> bool:
    """A refused global inside an already-imported module that lacks it: a truncated name, not a real class."""
    module, _, name = qualified.rpartition(".")
    return module in sys.modules and not hasattr(sys.modules[module], name)


def _load_pickle(path: Path, allow_unsafe_pickle: bool) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        message = str(exc)
        refused = _refused_global(message)
        if refused is not None and _is_cut_name(refused):
            raise _corrupt(path, f"the pickle names {refused}, which does not exist: the data ends mid-name") from exc
        operand = re.search(r"Unsupported operand (\d+)", message)
        if operand is not None and not allow_unsafe_pickle:  # pickle.dump's protocol 4/5 (FRAME), not torch.save's 2
            raise UnsafeCheckpointError(
                f"{path}: refused as unsafe: the pickle uses instruction {operand.group(1)} (pickle protocol 4 or 5, as"
                " pickle.dump writes; torch.save uses 2 by default), which torch.load(weights_only=True) cannot read, "
                "so only a full unpickle, which can run code from the file, could load it (or the file is damaged). "
                "If you trust this file, pass allow_unsafe_pickle=True (CLI: --allow-unsafe-pickle), then re-save it "
                "as safetensors."
            ) from None
        if operand is None and ("Weights only load failed" not in message or refused is None):
            raise _corrupt(path, _weights_only_reason(message)) from exc
        if not allow_unsafe_pickle:
            raise UnsafeCheckpointError(
                f"{path}: refused as unsafe: the file references {refused}, which is not a tensor, container or "
                "other type that torch.load(weights_only=True) allows. Unpickling arbitrary objects can run code "
                "from the file, so clipforge never does it by default. If you trust this file (a legacy training "
                "checkpoint you made yourself, say), pass allow_unsafe_pickle=True (CLI: --allow-unsafe-pickle) to "
                "load it with torch.load(weights_only=False), then re-save it as safetensors."
            ) from None
    except Exception as exc:  # torch reports corruption as RuntimeError, EOFError, UnicodeDecodeError, ...
        raise _corrupt(path, f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''}") from exc
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except (ImportError, AttributeError) as exc:
        raise CheckpointError(f"{path}: unpickling needs code that is not importable here ({exc})") from exc
    except Exception as exc:
        raise _corrupt(path, f"{type(exc).__name__}: {exc}") from exc


def _unwrap_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """Peel training wrappers ({"state_dict": ...}, {"model": ...}, {"module": ...}, a module) off a loaded object."""
    for _ in range(4):  # wrappers nest at most a few deep ({"model": {"module": ...}})
        if isinstance(obj, torch.nn.Module):
            obj = obj.state_dict()
        if not isinstance(obj, Mapping):
            break
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), (Mapping, torch.nn.Module))), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state dict of tensors")
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        keys = sorted(str(k) for k in obj)[:10]
        raise CheckpointError(
            f"{path}: no tensors found; top-level keys are {keys} (expected a state dict, or one wrapped in "
            f"one of {list(_WRAPPER_KEYS)})"
        )
    if all(k.startswith(_DDP_PREFIX) for k in tensors):  # saved from a DistributedDataParallel wrapper
        tensors = {k[len(_DDP_PREFIX) :]: v for k, v in tensors.items()}
    return tensors


def read_tensors(path: str | os.PathLike, *, allow_unsafe_pickle: bool = False) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint file as a flat {name: CPU tensor} dict, dtypes as stored.

    safetensors files are read as they are; pickled torch files through `torch.load(weights_only=True)`
    with training wrappers and a DDP `module.` prefix removed; TorchScript archives without executing
    their code (`torchscript.read_torchscript`). `allow_unsafe_pickle=True` is the opt-in for trusted
    legacy pickles that weights_only refuses. Every failure is a `CheckpointError` naming the file.
    """
    path = Path(path)
    fmt = detect_checkpoint_format(path)
    if fmt == "safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(path, device="cpu")
        except (SafetensorError, OSError, ValueError, RuntimeError, MemoryError) as exc:
            raise _corrupt(path, str(exc)) from exc
    if fmt == "torchscript":
        from .torchscript import read_torchscript

        return read_torchscript(path)
    if fmt == "npz":  # big_vision arrays under their own names (bigvision.py maps them to clipforge's)
        from .bigvision import read_npz_arrays

        return {k: torch.from_numpy(v) for k, v in read_npz_arrays(path).items()}
    return _unwrap_state_dict(_load_pickle(path, allow_unsafe_pickle), path)


__all__ = [
    "CheckpointConfigError",
    "CheckpointError",
    "CheckpointFormat",
    "UnsafeCheckpointError",
    "detect_checkpoint_format",
    "read_tensors",
    "reading_config",
]
