"""Checkpoint containers: format detection, safe readers, the TorchScript reader, and their errors.

TorchScript archives are made here with torch.jit.script and torch.jit.trace of open_clip models in
OpenAI's layout (plus OpenAI's three metadata buffers), so they have the shape of openai/CLIP's
`.pt` files; the reader must return exactly `torch.jit.load(path).state_dict()`.
"""

import argparse
import os
import pickle
import zipfile
from pathlib import Path

import open_clip
import pytest
import torch
from open_clip.model import CLIPTextCfg, CLIPVisionCfg
from safetensors.torch import save_file

from clipforge.weights.formats import CheckpointError, detect_checkpoint_format, read_tensors
from clipforge.weights.torchscript import read_torchscript


def _openai_layout_model(tower: str) -> torch.nn.Module:
    """A tiny open_clip CLIP with OpenAI's parameter names and metadata buffers, random non-trivial weights."""
    torch.manual_seed(0)
    if tower == "vit":
        vision = CLIPVisionCfg(layers=2, width=128, patch_size=8, image_size=32)
    else:
        vision = CLIPVisionCfg(layers=(1, 2, 1, 1), width=16, image_size=64)
    text = CLIPTextCfg(context_length=16, vocab_size=1000, width=128, heads=2, layers=2)
    model = open_clip.model.CLIP(32, vision, text, quick_gelu=True).eval()
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("running_var"):
                t.uniform_(0.5, 1.5)
            elif t.is_floating_point():
                t.add_(0.05 * torch.randn_like(t))
    del model.context_length, model.vocab_size  # plain ints in open_clip, tensors in OpenAI's archives
    model.register_buffer("input_resolution", torch.tensor(vision.image_size))
    model.register_buffer("context_length", torch.tensor(text.context_length))
    model.register_buffer("vocab_size", torch.tensor(text.vocab_size))
    return model


def _example_inputs(model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    size = int(model.input_resolution)
    return torch.randn(2, 3, size, size), torch.randint(0, int(model.vocab_size), (2, int(model.context_length)))


def _save_archive(model: torch.nn.Module, how: str, path: Path, half: bool) -> Path:
    if how == "script":
        module = torch.jit.script(model.half() if half else model)
    else:
        module = torch.jit.trace(model, _example_inputs(model), check_trace=False)
        if half:
            module = module.half()
    module.save(str(path))
    return path


def _assert_same_tensors(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert sorted(got) == sorted(want)
    for key, value in want.items():
        assert got[key].dtype == value.dtype, key
        assert got[key].shape == value.shape, key
        assert torch.equal(got[key], value), key


# ----------------------------------------------------------------------------- TorchScript reader


@pytest.mark.parametrize(
    "tower, how, half",
    [("vit", "script", True), ("vit", "trace", False), ("vit", "trace", True), ("rn", "trace", True)],
)
def test_torchscript_reader_equals_jit_load_state_dict(tmp_path, tower, how, half):
    path = _save_archive(_openai_layout_model(tower), how, tmp_path / f"{tower}-{how}.pt", half)
    assert detect_checkpoint_format(path) == "torchscript"
    tensors = read_tensors(path)
    _assert_same_tensors(tensors, torch.jit.load(str(path), map_location="cpu").state_dict())
    assert {"input_resolution", "context_length", "vocab_size"} <= set(tensors)
    if half:  # fp16 storages come back as fp16, bit for bit
        assert tensors["token_embedding.weight"].dtype == torch.float16
        assert tensors["visual.conv1.weight"].dtype == torch.float16


def test_torchscript_reader_skips_plain_tensor_attributes(tmp_path):
    class WithAttribute(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(3, 2, bias=False)
            self.register_buffer("kept", torch.arange(4))
            self.plain = torch.ones(5)  # neither parameter nor buffer

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.linear(x) + self.plain.sum() + self.kept.sum()

    path = tmp_path / "attr.pt"
    torch.jit.script(WithAttribute()).save(str(path))
    tensors = read_torchscript(path)
    _assert_same_tensors(tensors, torch.jit.load(str(path)).state_dict())
    assert set(tensors) == {"linear.weight", "kept"}


def _forge_archive(path: Path, data_pkl: bytes, extra: dict[str, bytes] | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", data_pkl)
        archive.writestr("archive/code/__torch__/m.py", "class M(Module):\n  __parameters__ = []\n")
        archive.writestr("archive/constants.pkl", pickle.dumps((), protocol=2))
        archive.writestr("archive/version", "3\n")
        for name, data in (extra or {}).items():
            archive.writestr(name, data)
    return path


class _Foreign:
    """Pickles as a call to os.getcwd: a global a weight archive has no business referencing."""

    def __reduce__(self):
        return (os.getcwd, ())


def test_torchscript_unknown_global_is_refused_with_its_name(tmp_path):
    path = _forge_archive(tmp_path / "evil.pt", pickle.dumps({"x": _Foreign()}, protocol=2))
    assert detect_checkpoint_format(path) == "torchscript"
    with pytest.raises(CheckpointError) as info:
        read_tensors(path)
    message = str(info.value)
    assert f"{os.getcwd.__module__}.getcwd" in message and str(path) in message


def test_torchscript_missing_storage_record_is_truncation(tmp_path):
    source = _save_archive(_openai_layout_model("vit"), "trace", tmp_path / "full.pt", half=False)
    cut = tmp_path / "cut.pt"
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(cut, "w") as dst:
        for info in src.infolist():
            if not info.filename.endswith("/data/0"):
                dst.writestr(info, src.read(info))
    with pytest.raises(CheckpointError, match="truncated"):
        read_tensors(cut)


def test_truncated_torchscript_archive(tmp_path):
    source = _save_archive(_openai_layout_model("vit"), "trace", tmp_path / "full.pt", half=True)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated") as info:
        read_tensors(cut)
    assert str(cut) in str(info.value) and "re-download" in str(info.value)


# ----------------------------------------------------------------------------- safetensors and pickles


def _state_dict() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"a.weight": torch.randn(3, 4, generator=g), "a.bias": torch.randn(3, generator=g), "n": torch.arange(5)}


def test_safetensors_roundtrip(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file(_state_dict(), str(path))
    assert detect_checkpoint_format(path) == "safetensors"
    _assert_same_tensors(read_tensors(path), _state_dict())


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: sd,
        lambda sd: {"state_dict": sd, "epoch": 3},
        lambda sd: {"model": sd, "optimizer": {"lr": 0.1}},
        lambda sd: {"module": sd},
        lambda sd: {"module." + k: v for k, v in sd.items()},
        lambda sd: {"state_dict": {"module." + k: v for k, v in sd.items()}, "step": 7},
    ],
    ids=["plain", "state_dict", "model", "module", "ddp", "state_dict+ddp"],
)
def test_pickle_wrappers_and_ddp_prefix_are_removed(tmp_path, wrap):
    path = tmp_path / "w.bin"
    torch.save(wrap(_state_dict()), path)
    assert detect_checkpoint_format(path) == "pickle"
    _assert_same_tensors(read_tensors(path), _state_dict())


def test_legacy_non_zip_pickle(tmp_path):
    path = tmp_path / "legacy.pt"
    torch.save(_state_dict(), path, _use_new_zipfile_serialization=False)
    assert detect_checkpoint_format(path) == "pickle"
    _assert_same_tensors(read_tensors(path), _state_dict())


def test_weights_only_refusal_names_file_reason_and_opt_in(tmp_path):
    path = tmp_path / "train_ckpt.pt"
    torch.save({"state_dict": _state_dict(), "args": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(CheckpointError) as info:
        read_tensors(path)
    message = str(info.value)
    assert str(path) in message
    assert "argparse.Namespace" in message
    assert "allow_unsafe_pickle=True" in message
    _assert_same_tensors(read_tensors(path, allow_unsafe_pickle=True), _state_dict())


def test_unknown_global_in_pickle_is_refused(tmp_path):
    path = tmp_path / "foreign.pt"
    torch.save({"weight": torch.ones(2), "hook": _Foreign()}, path)
    with pytest.raises(CheckpointError, match="getcwd") as info:
        read_tensors(path)
    assert "allow_unsafe_pickle" in str(info.value)


# ----------------------------------------------------------------------------- bad inputs


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "nope.safetensors"
    with pytest.raises(CheckpointError, match="not found") as info:
        detect_checkpoint_format(path)
    assert str(path) in str(info.value)


def test_directory_lists_accepted_layouts(tmp_path):
    with pytest.raises(CheckpointError) as info:
        read_tensors(tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message
    for layout in ("clipforge", "open_clip_config.json", "config.json", "CLIPModel"):
        assert layout in message


@pytest.mark.parametrize(
    "content", [b"", os.urandom(64), b"not a checkpoint at all\n"], ids=["empty", "random", "text"]
)
def test_corrupt_files(tmp_path, content):
    path = tmp_path / "model.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="corrupt or truncated") as info:
        read_tensors(path)
    assert str(path) in str(info.value) and "re-download" in str(info.value)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_truncated_pickle(tmp_path, legacy):
    full = tmp_path / "full.pt"
    torch.save(_state_dict(), full, _use_new_zipfile_serialization=not legacy)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated") as info:
        read_tensors(cut)
    assert str(cut) in str(info.value)


def test_truncated_safetensors(tmp_path):
    full = tmp_path / "full.safetensors"
    save_file(_state_dict(), str(full))
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(full.read_bytes()[:-8])
    with pytest.raises(CheckpointError, match="corrupt or truncated") as info:
        detect_checkpoint_format(cut)
    assert str(cut) in str(info.value)


def test_zip_that_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "other.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "hello")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        detect_checkpoint_format(path)
