"""A corpus of broken and malicious checkpoints, for tests that every one of them is refused cleanly.

Each entry is a file or folder that `clipforge.load_model` must turn into one `CheckpointError`
(never a traceback of another type, never a hang, never a huge allocation) and that
`clipforge classify/embed --pretrained` must report as one error line with exit code 4. The cases
cover the ways a real file goes wrong (empty, truncated, random bytes under a checkpoint's name,
a zip that is not a torch archive, a record missing from an archive), the ways a crafted file
attacks a reader (safetensors headers with unknown dtypes, negative, overlapping or overflowing
offsets, a header nested deep enough to exhaust the JSON parser's recursion, a length field past
the end of the file, a pickle calling `os.system`, a TorchScript code file nested deep enough to
exhaust `ast.parse`, a config whose width would allocate tens of GB before any shape check), and
the ways a config or state dict can disagree with itself (wrong JSON types, wrong shapes, integer
weights, NaN/inf weights).

`build_corpus(root)` writes them all under `root` and returns `BadCheckpoint` records; `expect` is
a fragment the error message must contain when the case has one message that matters (the pickle
refused as unsafe must say so, not "corrupt").
"""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save as safetensors_bytes

# A checkpoint's tensors are read in a few ms; anything near this means a hang or a huge allocation.
SECONDS_PER_CASE = 10.0


@dataclass(frozen=True)
class BadCheckpoint:
    """One broken input: `path` to hand to load_model / --pretrained, and what the message must say."""

    name: str
    path: Path
    expect: tuple[str, ...] = ()


def _tiny_model():
    import clipforge

    torch.manual_seed(0)
    return clipforge.create_model("tiny-vit")


def _safetensors_raw(header: object | bytes, data: bytes = b"", length: int | None = None) -> bytes:
    """A safetensors file with a hand-made header (JSON value or raw bytes) and data section."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


def _one(dtype: str = "F32", shape: object = (2,), offsets: object = (0, 8), nbytes: int = 8) -> bytes:
    """A safetensors file with one tensor "w" whose header entry is given field by field."""
    offsets = list(offsets) if isinstance(offsets, tuple) else offsets
    entry = {"dtype": dtype, "shape": list(shape), "data_offsets": offsets}
    return _safetensors_raw({"w": entry}, b"\0" * nbytes)


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


class _System:
    """Pickles as a call to os.system: what a malicious checkpoint does to run code on load. The command
    creates `marker`, so a test can tell that it never ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def _legacy_pickle_with_system(marker: Path) -> bytes:
    # Protocol 2 starts with PROTO 2 (0x80 0x02), what torch.save's legacy format looks like.
    return pickle.dumps({"visual.proj": _System(marker)}, protocol=2)


def _zip_with(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _torch_zip(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _rewrite_zip(data: bytes, change: dict[str, bytes | None]) -> bytes:
    """A copy of zip `data` with members replaced (bytes) or dropped (None); names match by suffix."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            hit = next((k for k in change if info.filename.endswith(k)), None)
            if hit is None:
                dst.writestr(info, src.read(info))
            elif change[hit] is not None:
                dst.writestr(info.filename, change[hit])
    return out.getvalue()


def _torchscript_archive() -> bytes:
    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = torch.nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.proj(x)

    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(Tiny()), buffer)
    return buffer.getvalue()


def _native_dir(folder: Path, config: dict, tensors: dict[str, torch.Tensor] | None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"format": "clipforge", "version": 1, "model": config})
    (folder / "clipforge_config.json").write_text(text)
    if tensors is not None:
        (folder / "clipforge_model.safetensors").write_bytes(safetensors_bytes(tensors))
    return folder


def _embedded(tensors: dict[str, torch.Tensor], config: dict | str) -> bytes:
    text = config if isinstance(config, str) else json.dumps({"format": "clipforge", "version": 1, "model": config})
    return safetensors_bytes(tensors, metadata={"clipforge_config": text})


def _with(config: dict, section: str | None, **changes: object) -> dict:
    """A copy of a config dict with fields of one section ("vision", "text") or of the top level changed."""
    if section is None:
        return {**config, **changes}
    return {**config, section: {**config[section], **changes}}


def build_corpus(root: Path) -> list[BadCheckpoint]:
    """Write every bad checkpoint under `root`; return them in a stable order."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    model = _tiny_model()
    config = model.config.to_dict()
    good = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    good_st = safetensors_bytes(good)
    rng = torch.Generator().manual_seed(8)
    noise = bytes(torch.randint(0, 256, (4096,), generator=rng, dtype=torch.uint8).tolist())
    cases: list[BadCheckpoint] = []
    pwned = root / "PWNED"  # what the malicious pickles would create if they ever ran

    def add(name: str, data: bytes, *expect: str) -> None:
        cases.append(BadCheckpoint(name, _write(root / name, data), expect))

    def add_dir(name: str, folder: Path, *expect: str) -> None:
        cases.append(BadCheckpoint(name, folder, expect))

    # ---- not a checkpoint at all
    add("empty.pt", b"", "empty")
    add("empty.safetensors", b"", "empty")
    add("random.pt", noise)
    add("random.bin", noise[::-1])
    add("random.safetensors", noise[1:])
    add("text.pt", b"this is not a checkpoint\n")
    add("zero-header-len.safetensors", struct.pack("<Q", 0) + b"{}")

    # ---- safetensors: cut short, and headers crafted against the reader
    add("truncated-data.safetensors", good_st[: len(good_st) // 2], "truncated")
    add("truncated-header.safetensors", good_st[:40])
    add("header-past-end.safetensors", _safetensors_raw({"a": 1}, length=10_000))
    add("header-len-2-63.safetensors", _safetensors_raw({"a": 1}, length=2**63))
    add("header-not-json.safetensors", _safetensors_raw(b"{not json at all"))
    add("header-not-utf8.safetensors", _safetensors_raw(b'{"\xff\xfe": 1}'))
    add("header-entry-is-list.safetensors", _safetensors_raw({"a": [1, 2]}))
    add("header-entry-is-int.safetensors", _safetensors_raw({"a": 1}))
    add("unknown-dtype.safetensors", _one(dtype="Q7"))
    add("negative-offset.safetensors", _one(offsets=(-8, 0)))
    overlap = {
        "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
    }
    add("overlapping-offsets.safetensors", _safetensors_raw(overlap, b"\0" * 12))
    overflow = b'{"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 1e999]}}'  # 1e999 parses as inf
    add("overflow-offset.safetensors", _safetensors_raw(overflow, b"\0" * 8))
    add("huge-offset.safetensors", _one(offsets=(0, 2**70)))
    add("offsets-not-list.safetensors", _one(offsets="0:8"))
    add("shape-mismatch-offsets.safetensors", _one(shape=(3,)))
    add("negative-shape.safetensors", _one(shape=(-2,)))
    add("huge-shape.safetensors", _one(shape=(2**40, 2**40)))
    depth = 200_000
    add("deep-nesting.safetensors", _safetensors_raw(b'{"a": ' + b"[" * depth + b"]" * depth + b"}"))
    entry = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
    metadata = {"__metadata__": {"clipforge_config": 5}, "w": entry}
    add("metadata-not-strings.safetensors", _safetensors_raw(metadata, b"\0" * 8))

    # ---- the embedded clipforge config of a safetensors file
    add("embedded-config-not-json.safetensors", _embedded(good, "{not json"))
    add("embedded-config-wrong-types.safetensors", _embedded(good, _with(config, "vision", width="wide")), "width")
    add("embedded-config-list-values.safetensors", _embedded(good, _with(config, None, embed_dim=[32])), "embed_dim")
    bomb = _with(config, "vision", width=10**6, heads=1)
    add("embedded-config-width-1e6.safetensors", _embedded(good, bomb), "shape")
    add("embedded-config-mlp-ratio-1e9.safetensors", _embedded(good, _with(config, "text", mlp_ratio=1e9)))

    # ---- state dicts that do not fit or are not weights
    wrong_shape = dict(good, **{"visual.proj": torch.zeros(3, 3)})
    add("wrong-shape.safetensors", _embedded(wrong_shape, config), "visual.proj")
    missing = {k: v for k, v in good.items() if k != "visual.proj"}
    add("missing-key.safetensors", _embedded(missing, config), "visual.proj")
    ints = {k: (v * 1000).to(torch.int32) for k, v in good.items()}
    add("int-weights.safetensors", _embedded(ints, config), "dtype")
    nan = dict(good, **{"visual.ln_post.weight": torch.full_like(good["visual.ln_post.weight"], float("nan"))})
    add("nan-weights.safetensors", _embedded(nan, config), "visual.ln_post.weight", "non-finite")
    inf_row = good["text.text_projection"].clone().index_fill_(0, torch.tensor([0]), float("inf"))
    inf = dict(good, **{"text.text_projection": inf_row})
    add("inf-weights.safetensors", _embedded(inf, config), "text.text_projection", "non-finite")
    bogus = {"visual.conv1.weight": torch.zeros(7), "x": torch.zeros(2)}
    add("no-config-bogus-shapes.safetensors", safetensors_bytes(bogus))
    add("no-config-unrelated.safetensors", safetensors_bytes({"encoder.weight": torch.zeros(2, 2)}))

    # ---- zips and pickles
    add("zip-not-torch.pt", _zip_with({"readme.txt": b"hello"}), "not a PyTorch checkpoint")
    add("bad-zip.pt", b"PK\x03\x04" + noise)
    state = _torch_zip({"visual.proj": torch.ones(2, 2)})
    add("torch-zip-missing-data.pt", _rewrite_zip(state, {"/data/0": None}))
    add("torch-zip-truncated.pt", state[: len(state) // 2])
    add("pickle-os-system.pt", _legacy_pickle_with_system(pwned), "unsafe", "allow_unsafe_pickle", "system")
    evil_zip = _rewrite_zip(state, {"/data.pkl": pickle.dumps({"visual.proj": _System(pwned)}, protocol=2)})
    add("torch-zip-os-system.pt", evil_zip, "unsafe", "allow_unsafe_pickle")
    add("pickle-list.pt", _torch_zip([1, 2, 3]))
    add("pickle-no-tensors.pt", _torch_zip({"epoch": 3, "lr": 0.1}))
    add("pickle-truncated-legacy.pt", _legacy_pickle_with_system(pwned)[:12])

    # ---- TorchScript archives
    archive = _torchscript_archive()
    deep_code = b"class Linear(Module):\n  __parameters__ = " + b"[" * 300_000 + b"]" * 300_000 + b"\n"
    add("torchscript-deep-code.pt", _rewrite_zip(archive, {"nn/modules/linear.py": deep_code}))
    evil_pkl = pickle.dumps(_System(pwned), protocol=2)
    add("torchscript-os-system.pt", _rewrite_zip(archive, {"/data.pkl": evil_pkl}), "system")
    add("torchscript-missing-storage.pt", _rewrite_zip(archive, {"/data/0": None}), "truncated")
    add("torchscript-not-clip.pt", archive)

    # ---- folders: open_clip, Hugging Face and clipforge layouts with broken configs
    def openclip_dir(name: str, text: str) -> None:
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "open_clip_config.json").write_text(text)
        (folder / "open_clip_model.safetensors").write_bytes(safetensors_bytes({"visual.proj": torch.ones(2, 2)}))
        add_dir(name, folder, "open_clip_config.json")

    openclip_dir("openclip-malformed", '{"model_cfg": {')
    wrong = {"model_cfg": {"embed_dim": "512", "vision_cfg": {"width": "wide"}}}
    openclip_dir("openclip-wrong-types", json.dumps(wrong))
    openclip_dir("openclip-cfg-is-list", json.dumps({"model_cfg": [1, 2]}))
    openclip_dir("openclip-vision-is-string", json.dumps({"model_cfg": {"vision_cfg": "ViT-B-32"}}))

    def hf_dir(name: str, text: str) -> None:
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(text)
        (folder / "model.safetensors").write_bytes(safetensors_bytes({"vision_model.x": torch.ones(2)}))
        add_dir(name, folder, "config.json")

    hf_dir("hf-malformed", "{")
    hf_dir("hf-wrong-types", json.dumps({"model_type": "clip", "vision_config": {"hidden_size": "768"}}))
    hf_dir("hf-is-list", "[]")
    hf_dir("hf-patch-zero", json.dumps({"model_type": "clip", "vision_config": {"patch_size": 0}}))

    def native(name: str, model_config: dict, tensors: dict | None, *expect: str) -> None:
        add_dir(name, _native_dir(root / name, model_config, tensors), *expect)

    native("native-wrong-types", _with(config, "vision", layers="2"), good, "layers")
    native("native-width-1e6", bomb, good, "shape")
    native("native-no-weights", config, None, "no weights")
    native("native-unknown-field", _with(config, None, depth=3), good, "depth")
    native("native-eps-string", _with(config, "text", layer_norm_eps="1e-5"), good, "layer_norm_eps")
    native("native-negative-heads", _with(config, "text", heads=-2), good, "heads")
    return cases
