"""Read the tensors of a TorchScript archive without running TorchScript or unpickling arbitrary objects.

OpenAI released the CLIP weights of Radford et al. 2021 ("Learning Transferable Visual Models From
Natural Language Supervision") as TorchScript archives, the `.pt` files that openai/CLIP's
`clip.load` opens with `torch.jit.load`. That call compiles the archive's `code/` and unpickles
`data.pkl` with a full unpickler: loading a file means trusting it. This module reads the same
parameters with neither.

An archive is a zip holding `<name>/data.pkl` (the module tree, pickled), `<name>/data/<key>` (raw
tensor storages), `<name>/code/__torch__/...py` (the compiled classes) and small metadata records.
`data.pkl` is read by a restricted unpickler: `find_class` hands out only what tensors are made of
(`torch._utils._rebuild_tensor_v2` and friends, storage types, dtypes, `collections.OrderedDict`)
and maps every `__torch__.*` module class to an inert record; `persistent_load` reads the storages
from the zip as `torch.serialization._load` does for its `('storage', type, key, location, numel)`
ids, always onto the CPU. Any other global is refused with a `CheckpointError` that names it.
The records are then walked into the dotted state dict `torch.jit.load(path).state_dict()` gives:
each class's `__parameters__` / `__buffers__` lists are read from its code file line by line
(matched as text, never executed), so plain tensor attributes stay out just as they do in torch.
"""

from __future__ import annotations

import io
import os
import pickle
import re
import sys
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch

from .formats import CheckpointError

# Legacy typed-storage class names (as pickled: `torch FloatStorage`) -> element dtype.
_STORAGE_DTYPES: dict[str, torch.dtype] = {
    "DoubleStorage": torch.float64,
    "FloatStorage": torch.float32,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
    "ComplexDoubleStorage": torch.complex128,
    "ComplexFloatStorage": torch.complex64,
    "UntypedStorage": torch.uint8,
}


# What malformed zip records or pickle opcodes raise while reading (our own refusals are CheckpointErrors).
_CORRUPTION_ERRORS = (
    zipfile.BadZipFile,
    EOFError,
    pickle.UnpicklingError,
    OSError,
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
    RuntimeError,
    RecursionError,
    OverflowError,
    MemoryError,
)


class _StorageType:
    """Stands in for a torch storage class inside data.pkl: only its dtype is needed."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.dtype = _STORAGE_DTYPES[name]


class ScriptRecord:
    """An inert stand-in for a `__torch__.*` object (a scripted module or class): its pickled state only.

    `qualified_name` is the TorchScript class name (e.g. `__torch__.clip.model.CLIP`); `state` is what
    the archive passed to `__setstate__` (a dict of attributes for modules).
    """

    qualified_name = "__torch__"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state

    @property
    def attributes(self) -> dict[str, Any]:
        """The record's attributes when its state is a dict, else empty."""
        return self.state if isinstance(self.state, dict) else {}


def _rebuild_tensor(
    storage: torch.Tensor, storage_offset: int, size: tuple, stride: tuple, *_unused: Any
) -> torch.Tensor:
    # storage: the flat (numel,) tensor read by persistent_load; requires_grad, hooks and metadata dropped.
    try:
        return storage.as_strided(tuple(size), tuple(stride), storage_offset)
    except RuntimeError as exc:
        raise CheckpointError(f"a tensor in data.pkl does not fit its storage ({exc}); the archive is corrupt") from exc


def _rebuild_parameter(data: torch.Tensor, *_unused: Any) -> torch.Tensor:
    return data


def _identity(value: Any, *_unused: Any) -> Any:
    return value


# (module, name) -> what the restricted unpickler returns for it. Nothing here runs code from the file.
_ALLOWED: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("collections", "OrderedDict"): OrderedDict,
    ("torch", "device"): torch.device,
    ("torch", "Size"): torch.Size,
    # TorchScript's typed-container helpers only tag lists and dicts with their static types.
    ("torch.jit._pickle", "restore_type_tag"): _identity,
    ("torch.jit._pickle", "build_intlist"): _identity,
    ("torch.jit._pickle", "build_doublelist"): _identity,
    ("torch.jit._pickle", "build_boollist"): _identity,
    ("torch.jit._pickle", "build_tensorlist"): _identity,
    ("torch.jit._pickle", "build_genericlist"): _identity,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles data.pkl into ScriptRecords and tensors; refuses every other global."""

    def __init__(self, data: bytes, load_storage: Callable[[torch.dtype, str, int], torch.Tensor], where: str):
        super().__init__(io.BytesIO(data))
        self._load_storage = load_storage
        self._where = where
        self._record_types: dict[str, type[ScriptRecord]] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "__torch__" or module.startswith("__torch__."):
            qualified = f"{module}.{name}"
            if qualified not in self._record_types:
                self._record_types[qualified] = type(name, (ScriptRecord,), {"qualified_name": qualified})
            return self._record_types[qualified]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        raise CheckpointError(
            f"{self._where}: data.pkl references the global {module}.{name}, which a TorchScript weight archive "
            "has no need for; refusing to load it (only tensors, storages, dtypes and __torch__ module records "
            "are read). The file is not a plain CLIP TorchScript archive, or it has been tampered with."
        )

    def persistent_load(self, pid: Any) -> torch.Tensor:
        if not (isinstance(pid, tuple) and len(pid) == 5):
            raise CheckpointError(f"{self._where}: unexpected persistent id {pid!r} in data.pkl")
        typename, storage_type, key, _location, numel = pid
        typename = typename.decode("ascii") if isinstance(typename, bytes) else typename
        if typename != "storage" or not isinstance(storage_type, _StorageType):
            raise CheckpointError(f"{self._where}: unexpected persistent id {pid!r} in data.pkl")
        return self._load_storage(storage_type.dtype, str(key), int(numel))


def _archive_prefix(names: list[str], where: str) -> str:
    tops = sorted({n[: -len("/data.pkl")] for n in names if n.endswith("/data.pkl") and n.count("/") == 1})
    if not tops:
        if any(n.endswith("model.json") for n in names):
            raise CheckpointError(
                f"{where}: a TorchScript archive in the pre-1.4 format (model.json), which is not supported; "
                "re-save it with a current torch (torch.jit.save(torch.jit.load(path), new_path)) from a trusted "
                "environment"
            )
        raise CheckpointError(f"{where}: not a TorchScript archive (no <name>/data.pkl record)")
    if len(tops) > 1:
        raise CheckpointError(f"{where}: several archives in one zip ({tops}); expected one <name>/data.pkl")
    return tops[0]


class _StorageReader:
    """Reads `<prefix>/data/<key>` records into flat CPU tensors, each once."""

    def __init__(self, archive: zipfile.ZipFile, prefix: str, where: str) -> None:
        self.archive = archive
        self.prefix = prefix
        self.where = where
        self.cache: dict[str, torch.Tensor] = {}
        self.archive_bytes = os.path.getsize(archive.filename) if archive.filename else 0
        order = f"{prefix}/byteorder"
        stored = archive.read(order).decode().strip() if order in archive.namelist() else "little"
        self.swap = stored != sys.byteorder

    def __call__(self, dtype: torch.dtype, key: str, numel: int) -> torch.Tensor:
        if key in self.cache:
            return self.cache[key]
        name = f"{self.prefix}/data/{key}"
        nbytes = numel * dtype.itemsize
        try:
            info = self.archive.getinfo(name)
        except KeyError:
            raise CheckpointError(f"{self.where}: storage record {name} is missing; the archive is truncated") from None
        if nbytes > _MAX_INFLATION * self.archive_bytes:  # deflate cannot pack more than ~1032:1
            raise CheckpointError(
                f"{self.where}: storage record {name} claims {nbytes} bytes, more than a {self.archive_bytes}-byte "
                "archive can hold; the archive is corrupt or crafted"
            )
        if info.file_size < nbytes:
            raise CheckpointError(
                f"{self.where}: storage record {name} holds {info.file_size} bytes, {nbytes} expected; "
                "the archive is corrupt or truncated"
            )
        buffer = bytearray(nbytes)
        view, filled = memoryview(buffer), 0
        with self.archive.open(info) as stream:
            while filled < nbytes:
                count = stream.readinto(view[filled:])
                if not count:
                    raise CheckpointError(f"{self.where}: storage record {name} ended early; the archive is truncated")
                filled += count
        flat = torch.frombuffer(buffer, dtype=torch.uint8) if nbytes else torch.empty(0, dtype=torch.uint8)
        if self.swap and dtype.itemsize > 1:
            flat = flat.view(-1, dtype.itemsize).flip(-1).reshape(-1)
        self.cache[key] = flat.view(dtype)  # (numel,)
        return self.cache[key]


# TorchScript prints a class's declarations as one line each, indented two spaces under `class Name(...):`:
#     __parameters__ = ["weight", "bias", ]
# They are read line by line with these patterns rather than with ast.parse, whose parser a crafted code
# file (brackets or unary operators nested a million deep) drives into MemoryError / RecursionError or
# minutes of work; a line-wise regular expression reads any file in linear time.
_CLASS_LINE = re.compile(r"class (\w+)\(")
_DECLARATION_LINE = re.compile(r"  (__parameters__|__buffers__) = \[([^\]]*)\]\s*$")
_DECLARED_NAME = re.compile(r'\s*"(\w+)"\s*')
# Real code files are tens of kB; a larger one is not read (its class then counts every tensor attribute).
_MAX_CODE_BYTES = 16 * 1024 * 1024
# data.pkl of the largest OpenAI archive (ViT-L/14@336px) is well under 1 MB; this bounds a zip bomb's record.
_MAX_DATA_PKL_BYTES = 64 * 1024 * 1024
_MAX_INFLATION = 1100


def _parse_declarations(code: str, class_name: str) -> tuple[list, list] | None:
    """(__parameters__, __buffers__) of `class_name` in TorchScript source `code`; None when not declared."""
    current, declared = None, {}
    for line in code.splitlines():
        match = _CLASS_LINE.match(line)
        if match:
            if current == class_name:
                break
            current, declared = match.group(1), {}
            continue
        if current != class_name:
            continue
        match = _DECLARATION_LINE.match(line)
        if match:
            items = [item for item in match.group(2).split(",") if item.strip()]
            names = [_DECLARED_NAME.fullmatch(item) for item in items]
            if all(names):
                declared[match.group(1)] = [n.group(1) for n in names]
    if current != class_name or "__parameters__" not in declared:
        return None
    return declared["__parameters__"], declared.get("__buffers__", [])


def _declared_tensors(archive: zipfile.ZipFile, prefix: str, qualified_name: str) -> tuple[list, list] | None:
    """(__parameters__, __buffers__) of a class, read from its code file; None when not declared there."""
    module_path, _, class_name = qualified_name.rpartition(".")
    name = f"{prefix}/code/{module_path.replace('.', '/')}.py"
    try:
        info = archive.getinfo(name)
        if info.file_size > _MAX_CODE_BYTES:
            return None
        code = archive.read(info).decode("utf-8")
    except (KeyError, UnicodeDecodeError):
        return None
    return _parse_declarations(code, class_name)


def _walk(
    record: ScriptRecord, prefix: str, declared: Callable[[str], tuple[list, list] | None], out: dict, path: tuple
) -> None:
    attributes = record.attributes
    names = declared(record.qualified_name)
    if names is None:  # no declarations found: every tensor attribute counts
        tensor_names = [k for k, v in attributes.items() if isinstance(v, torch.Tensor)]
    else:
        tensor_names = [*names[0], *names[1]]
    for name in tensor_names:
        value = attributes.get(name)
        if isinstance(value, torch.Tensor):  # an absent optional parameter (bias=None) is skipped
            out[prefix + name] = value
    for name, value in attributes.items():
        if isinstance(value, ScriptRecord) and id(value) not in path:
            _walk(value, f"{prefix}{name}.", declared, out, (*path, id(value)))


def is_torchscript_archive(names: list[str]) -> bool:
    """True when a zip's member names are those of a TorchScript archive (code/ and constants.pkl)."""
    return any(n.count("/") == 1 and n.endswith("/constants.pkl") for n in names) or any(
        n.split("/", 2)[1:2] == ["code"] for n in names if n.count("/") >= 2
    )


def read_torchscript(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state dict (parameters and buffers, dotted names) of a TorchScript archive, as CPU tensors.

    Equal, tensor for tensor, to `torch.jit.load(path, map_location="cpu").state_dict()`, without
    compiling the archive's code or unpickling anything but tensors. dtypes are kept (OpenAI's files
    are mostly float16).
    """
    where = os.fspath(path)
    try:
        with zipfile.ZipFile(where) as archive:
            names = archive.namelist()
            prefix = _archive_prefix(names, where)
            load_storage = _StorageReader(archive, prefix, where)
            data_pkl = archive.getinfo(f"{prefix}/data.pkl")
            if data_pkl.file_size > _MAX_DATA_PKL_BYTES:
                raise CheckpointError(
                    f"{where}: data.pkl claims {data_pkl.file_size} bytes, far more than a module tree needs; "
                    "the archive is corrupt or crafted"
                )
            root = _RestrictedUnpickler(archive.read(data_pkl), load_storage, where).load()
            if not isinstance(root, ScriptRecord):
                raise CheckpointError(f"{where}: data.pkl does not hold a TorchScript module")
            cache: dict[str, tuple[list, list] | None] = {}

            def declared(qualified_name: str) -> tuple[list, list] | None:
                if qualified_name not in cache:
                    cache[qualified_name] = _declared_tensors(archive, prefix, qualified_name)
                return cache[qualified_name]

            out: dict[str, torch.Tensor] = {}
            _walk(root, "", declared, out, (id(root),))
    except CheckpointError:
        raise
    except _CORRUPTION_ERRORS as exc:
        raise CheckpointError(
            f"{where}: the TorchScript archive is corrupt or truncated ({exc}); re-download the file"
        ) from exc
    if not out:
        raise CheckpointError(f"{where}: the TorchScript archive holds no parameters or buffers")
    return out
