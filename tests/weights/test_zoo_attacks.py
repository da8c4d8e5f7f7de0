"""The model-zoo readers (issue 11) under attack: crafted big_vision `.npz` files, transformers folders whose
config.json lies (absurd sizes, remote code), folders whose weights do not belong to their config, lying
safetensors headers and malicious pickles.

Every attack must end in a CheckpointError (or ConfigError) naming the file and what is wrong, quickly and without
allocating what the file asks for, and must never run code from the file. Files are built here in tmp; the models
are tiny random transformers models (SiglipModel, CLIPModel, AltCLIPModel).
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import time
import tracemalloc
import zipfile

import numpy as np
import pytest
import torch

import clipforge
from clipforge.models import CLIP
from clipforge.models.config import MAX_LAYERS, ConfigError, TextConfig
from clipforge.models.registry import get_model_config
from clipforge.weights.bigvision import read_npz_arrays
from clipforge.weights.formats import CheckpointError, UnsafeCheckpointError, read_tensors
from clipforge.weights.loading import read_config
from support.finishes import finishes

transformers = pytest.importorskip("transformers")

SIGLIP_TEXT = dict(
    vocab_size=300, hidden_size=48, intermediate_size=176, num_hidden_layers=2, num_attention_heads=3,
    max_position_embeddings=16, projection_size=64, pad_token_id=1, eos_token_id=2,
)
VISION = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, image_size=32,
              patch_size=8)
CLIP_TEXT = dict(vocab_size=300, hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=3,
                 max_position_embeddings=16)
ALT_TEXT = dict(vocab_size=300, hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=3,
                max_position_embeddings=24, project_dim=32)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("zoo")
    models = {
        "siglip": transformers.SiglipModel(transformers.SiglipConfig(text_config=SIGLIP_TEXT, vision_config=VISION)),
        "clip": transformers.CLIPModel(transformers.CLIPConfig(
            text_config=CLIP_TEXT, vision_config=VISION, projection_dim=32)),
        "altclip": transformers.AltCLIPModel(transformers.AltCLIPConfig(
            text_config=ALT_TEXT, vision_config=VISION, projection_dim=32)),
    }
    for name, model in models.items():
        model.save_pretrained(root / name)
    return root


def _variant(folders, tmp_path, family: str, edit) -> os.PathLike:
    """A copy of the `family` folder whose config.json went through `edit(config_dict)`."""
    folder = tmp_path / f"{family}_attack"
    shutil.copytree(folders / family, folder)
    config = json.loads((folder / "config.json").read_text())
    edit(config)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


# ------------------------------------------------------------------------------------------------ big_vision .npz


class _Payload:
    """Unpickling this writes a file: the proof that code from the checkpoint ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _npz_member(shape: tuple[int, ...], data: bytes, dtype: str = "<f4") -> bytes:
    header = {"descr": dtype, "fortran_order": False, "shape": shape}
    buffer = __import__("io").BytesIO()
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue() + data


def test_npz_object_array_is_refused_without_unpickling(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.npz"
    payload = np.empty(1, dtype=object)
    payload[0] = _Payload(str(marker))
    np.savez(path, **{"params/img/embedding/kernel": np.zeros((8, 8, 3, 4), np.float32), "params/t": payload})
    with pytest.raises(CheckpointError, match="object array.*never unpickles") as info:
        clipforge.load_model(path)
    assert "params/t" in str(info.value) and str(path) in str(info.value)
    assert not marker.exists()


def test_truncated_npz_is_a_checkpoint_error_naming_the_file(tmp_path):
    path = tmp_path / "cut.npz"
    np.savez(path, **{"params/img/embedding/kernel": np.ones((8, 8, 3, 64), np.float32)})
    data = path.read_bytes()
    for size in (len(data) // 2, len(data) - 30, 100):
        path.write_bytes(data[:size])
        with pytest.raises(CheckpointError, match=str(path)):
            clipforge.load_model(path)


def test_npz_header_declaring_a_huge_shape_is_refused_before_allocating(tmp_path):
    path = tmp_path / "liar.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("params/img/embedding/kernel.npy", _npz_member((8, 8, 3, 4), b"\0" * 3072))
        archive.writestr("params/img/pos_embedding.npy", _npz_member((1, 2**14, 2**14), b"\0" * 64))  # 1 GiB
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError, match=r"'params/img/pos_embedding' declares shape \(1, 16384, 16384\)"):
            read_npz_arrays(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2**20, f"{peak / 2**20:.0f} MiB allocated for a file of {path.stat().st_size} bytes"


def test_npz_zip_bomb_is_refused_from_the_zip_directory(tmp_path):
    path = tmp_path / "bomb.npz"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("params/img/embedding/kernel.npy", _npz_member((8, 8, 3, 4), b"\0" * 3072))
        n = 20 * 2**20 // 4  # 20 MiB of zeros deflate to ~20 KiB
        archive.writestr("params/img/pos_embedding.npy", _npz_member((1, n, 1), bytes(4 * n)))
    assert path.stat().st_size < 2**20
    with pytest.raises(CheckpointError, match="pos_embedding.npy' expands from .* zip bomb"):
        clipforge.load_model(path)


def test_npz_with_absurd_block_index_fails_on_the_layer_limit(tmp_path):
    """An `encoderblock_1000000` leaf must not make the reader build a million-layer model skeleton."""
    path = tmp_path / "deep.npz"
    arrays = {"params/img/embedding/kernel": np.zeros((8, 8, 3, 64), np.float32),
              "params/img/pos_embedding": np.zeros((1, 16, 64), np.float32),
              "params/img/Transformer/encoderblock_1000000/LayerNorm_0/scale": np.ones(64, np.float32)}
    np.savez(path, **arrays)
    exc = finishes(lambda: clipforge.load_model(path), 20)
    assert isinstance(exc, CheckpointError) and str(path) in str(exc)


# ------------------------------------------------------------------------------------------ config.json sizes

ABSURD = [  # (family, section, field, value, what the message must say)
    ("siglip", "text_config", "vocab_size", 10**12, r"token_embedding.weight' has shape \(300, 48\), expected"),
    ("siglip", "text_config", "hidden_size", 10**7, "text.width 10000000 not divisible by heads"),
    ("siglip", "vision_config", "num_hidden_layers", 10**6, f"vision.layers=1000000: .* limit of {MAX_LAYERS}"),
    ("siglip", "text_config", "num_hidden_layers", 5000, f"text.layers=5000: .* limit of {MAX_LAYERS}"),
    ("siglip", "vision_config", "num_attention_heads", 0, "vision.heads=0 must be positive"),
    ("siglip", "vision_config", "num_attention_heads", -4, "vision.heads=-4 must be positive"),
    ("siglip", "vision_config", "patch_size", 64, "patch_size 64 exceeds image_size 32"),
    ("clip", "vision_config", "hidden_size", 10**7, r"class_embedding' has shape \(64,\), expected \(10000000,\)"),
    ("clip", "vision_config", "num_hidden_layers", 5000, f"vision.layers=5000: .* limit of {MAX_LAYERS}"),
    ("clip", "text_config", "num_attention_heads", -1, "text.heads=-1 must be positive"),
    ("altclip", "text_config", "num_hidden_layers", 1000, "num_hidden_layers=1000 must be a positive int of at most"),
    ("altclip", "text_config", "num_attention_heads", 0, "num_attention_heads=0 is not a positive int"),
    ("altclip", "vision_config", "num_hidden_layers", 5000, f"vision.layers=5000: .* limit of {MAX_LAYERS}"),
]


@pytest.mark.parametrize("family,section,field,value,message", ABSURD, ids=[f"{a[0]}-{a[2]}-{a[3]}" for a in ABSURD])
def test_absurd_config_sizes_fail_fast_naming_the_field(folders, tmp_path, family, section, field, value, message):
    folder = _variant(folders, tmp_path, family, lambda c: c[section].__setitem__(field, value))
    start = time.perf_counter()
    exc = finishes(lambda: clipforge.load_model(folder), 30)
    elapsed = time.perf_counter() - start
    assert isinstance(exc, CheckpointError), exc
    assert str(folder) in str(exc)
    assert __import__("re").search(message, str(exc)), str(exc)
    assert elapsed < 10, f"{elapsed:.1f} s to refuse"


def test_deep_configs_are_refused_by_the_config_itself():
    base = get_model_config("ViT-B-32")
    with pytest.raises(ConfigError, match=f"vision.layers=513: 513 blocks is over the limit of {MAX_LAYERS}"):
        base.replace(vision=base.vision.__class__(**{**base.vision.__dict__, "layers": MAX_LAYERS + 1}))
    with pytest.raises(ConfigError, match="vision.layers=\\(200, 200, 200, 200\\): 800 blocks"):
        base.replace(vision=base.vision.__class__(**{**base.vision.__dict__, "layers": (200, 200, 200, 200),
                                                     "patch_size": None}))


# ---------------------------------------------------------------------------------------- remote code, hf_config


def test_auto_map_in_an_altclip_folder_is_dropped_and_never_imported(folders, tmp_path):
    """The AltCLIP / Chinese-CLIP readers copy only architecture fields into hf_config: custom code is not named."""
    marker = tmp_path / "pwned"

    def edit(config):
        config["text_config"]["auto_map"] = {"AutoModel": "evil_modeling.EvilModel"}

    folder = _variant(folders, tmp_path, "altclip", edit)
    (folder / "evil_modeling.py").write_text(f"open({str(marker)!r}, 'w').close()\nclass EvilModel: pass\n")
    model = clipforge.load_model(folder)
    assert "auto_map" not in model.config.text.hf_config
    assert type(model.text.transformer).__name__ == "XLMRobertaModel"
    assert not marker.exists()


def test_hf_config_with_auto_map_is_refused_naming_it():
    """An hf_config from an open_clip folder's encoder config.json (copied whole) may name custom code: refused."""
    base = get_model_config("ViT-B-32")
    hf_config = {"model_type": "xlm-roberta", "hidden_size": 32, "num_attention_heads": 2, "num_hidden_layers": 1,
                 "intermediate_size": 64, "vocab_size": 100, "auto_map": {"AutoModel": "evil.Model"}}
    text = TextConfig(hf_config=hf_config, width=32, heads=2, layers=1)
    with torch.device("meta"), pytest.raises(ConfigError, match="auto_map .*custom model code, which clipforge never"):
        CLIP(base.replace(text=text))


@pytest.mark.parametrize("model_type", ["trust_remote_code", "evil_model", "llama", None])
def test_arbitrary_hf_text_model_types_are_refused(model_type):
    base = get_model_config("ViT-B-32")
    text = TextConfig(hf_config={"model_type": model_type or "", "hidden_size": 32}, width=32, heads=2, layers=1)
    with torch.device("meta"), pytest.raises(ConfigError, match="is not a supported Hugging Face text architecture"):
        CLIP(base.replace(text=text))


def test_hf_text_depth_is_capped_in_every_family_field():
    base = get_model_config("ViT-B-32")
    for model_type, key in (("xlm-roberta", "num_hidden_layers"), ("m2m_100", "encoder_layers"), ("mt5", "num_layers")):
        text = TextConfig(hf_config={"model_type": model_type, key: MAX_LAYERS + 1}, width=32, heads=2, layers=1)
        with torch.device("meta"), pytest.raises(ConfigError, match=f"text.hf_config.{key}={MAX_LAYERS + 1} must"):
            CLIP(base.replace(text=text))


# ------------------------------------------------------------------------------ weights that do not fit their config


def test_siglip_config_with_clip_weights_names_the_first_missing_key(folders, tmp_path):
    folder = tmp_path / "mixed"
    shutil.copytree(folders / "siglip", folder)
    shutil.copy(folders / "clip" / "model.safetensors", folder / "model.safetensors")
    with pytest.raises(CheckpointError, match="missing key") as info:
        clipforge.load_model(folder)
    message = str(info.value)
    assert str(folder) in message and "'text_model.head.bias'" in message  # the first missing key, sorted


def test_safetensors_header_lying_about_a_shape_is_refused_naming_the_tensor(folders, tmp_path):
    folder = tmp_path / "lying"
    shutil.copytree(folders / "siglip", folder)
    path = folder / "model.safetensors"
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    header["logit_scale"]["shape"] = [2**20, 2**20]
    raw = json.dumps(header).encode()
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + data[8 + n:])
    with pytest.raises(CheckpointError, match="logit_scale.*data_offsets"):
        clipforge.load_model(folder)


def test_malicious_pickle_in_an_hf_folder_is_refused_and_never_runs(folders, tmp_path):
    marker = tmp_path / "pwned"
    folder = tmp_path / "pickled"
    shutil.copytree(folders / "siglip", folder)
    (folder / "model.safetensors").unlink()
    with open(folder / "pytorch_model.bin", "wb") as f:
        pickle.dump({"vision_model.embeddings.patch_embedding.weight": _Payload(str(marker))}, f)
    with pytest.raises(UnsafeCheckpointError, match="pickle protocol 4 or 5.*allow_unsafe_pickle=True"):
        clipforge.load_model(folder)
    assert not marker.exists()


def test_trusted_protocol_5_pickle_loads_with_the_opt_in(folders, tmp_path):
    """torch.save(..., pickle_protocol=5) is out of weights_only's reach: refused as unsafe by default (it was
    "corrupt"), read with allow_unsafe_pickle (it was refused even then)."""
    from safetensors.torch import load_file

    tensors = load_file(folders / "siglip" / "model.safetensors")
    path = tmp_path / "legacy.bin"
    torch.save(tensors, path, pickle_protocol=5)
    with pytest.raises(UnsafeCheckpointError, match="pickle protocol 4 or 5"):
        read_tensors(path)
    loaded = read_tensors(path, allow_unsafe_pickle=True)
    assert loaded.keys() == tensors.keys() and torch.equal(loaded["logit_scale"], tensors["logit_scale"])


# ------------------------------------------------------------------------------------------- config.json files


def test_fifo_config_json_never_blocks_the_config_reader(folders, tmp_path):
    folder = tmp_path / "fifo"
    shutil.copytree(folders / "siglip", folder)
    (folder / "config.json").unlink()
    os.mkfifo(folder / "config.json")
    exc = finishes(lambda: read_config(folder), 10)
    assert isinstance(exc, CheckpointError) and "FIFO" in str(exc) and "config.json" in str(exc)


def test_huge_config_json_is_refused_before_reading(folders, tmp_path):
    folder = tmp_path / "huge"
    shutil.copytree(folders / "siglip", folder)
    with open(folder / "config.json", "wb") as f:  # sparse: 4 GiB declared
        f.truncate(4 * 2**30)
    exc = finishes(lambda: read_config(folder), 10)
    assert isinstance(exc, CheckpointError) and "over the limit" in str(exc)


def test_convert_help_lists_the_zoo_readers_and_only_the_refused_families():
    """A newcomer reads `clipforge convert --help` to learn what it reads: every zoo folder kind, and as refused
    only what families.py still refuses (SigLIP 2 and training-form MobileCLIP are read now)."""
    from clipforge.cli.convert import build_parser

    text = " ".join(build_parser().format_help().split())
    for reader in ("SiglipModel", "Siglip2Model", "AltCLIPModel", "ChineseCLIPModel", "big_vision SigLIP .npz"):
        assert reader in text
    assert "NaFlex SigLIP 2" in text and "reparameterised MobileCLIP" in text


@pytest.mark.parametrize("name", ["open_clip_config.json", "clipforge_config.json"])
def test_fifo_config_of_an_openclip_or_clipforge_folder_never_blocks(tmp_path, name):
    folder = tmp_path / "cfg"
    folder.mkdir()
    os.mkfifo(folder / name)
    exc = finishes(lambda: read_config(folder), 10)
    assert isinstance(exc, CheckpointError) and "FIFO" in str(exc) and name in str(exc)
    exc = finishes(lambda: clipforge.load_model(folder), 10)
    assert isinstance(exc, CheckpointError) and str(folder) in str(exc)
