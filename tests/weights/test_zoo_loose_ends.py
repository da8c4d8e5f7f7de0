"""Loose ends of the model-zoo readers and writers (issue 11, W9).

- `allow_unsafe_pickle=True` reaches every transformers folder reader (CLIPModel, sharded CLIPModel, SiglipModel,
  Siglip2Model, AltCLIPModel, ChineseCLIPModel): a trusted protocol-5 `pytorch_model.bin`, which weights_only
  cannot read, loads with the opt-in and is refused without it.
- The second config files each reader opens (SigLIP's / AltCLIP's / Chinese-CLIP's config.json, tokenizer_config.json,
  preprocessor_config.json, a shard index) are read under safeio: a FIFO there is a CheckpointError naming the file,
  never a read that blocks forever.
- A text-encoder depth over the limit names config.json, the file to fix.
- A Siglip2Model folder written from a model read from one carries its tokenizer: same ids from transformers'
  AutoTokenizer and clipforge's get_tokenizer on both folders.
- A big_vision `.npz` (no image size in it) is read at an explicit `image_size=` that floors to its grid.

Models are tiny random transformers models, saved in tmp.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

import clipforge  # noqa: E402
from clipforge.weights import hf, hf_altclip, hf_chinese_clip, hf_siglip, hf_siglip2  # noqa: E402
from clipforge.weights.bigvision import read_big_vision_npz  # noqa: E402
from clipforge.weights.formats import CheckpointError, UnsafeCheckpointError  # noqa: E402
from clipforge.weights.loading import build_model  # noqa: E402
from support.finishes import finishes  # noqa: E402
from support.tolerance import assert_close_rel  # noqa: E402

VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=16,
              patch_size=8)
TEXT = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
            max_position_embeddings=16)
SIGLIP_TEXT = dict(TEXT, projection_size=32, pad_token_id=0, eos_token_id=1)
SIGLIP2_VISION = {**{k: v for k, v in VISION.items() if k != "image_size"}, "num_patches": 4}


def _hf_models() -> dict:
    return {
        "clip": transformers.CLIPModel(transformers.CLIPConfig(text_config=TEXT, vision_config=VISION,
                                                                projection_dim=16)),
        "siglip": transformers.SiglipModel(transformers.SiglipConfig(text_config=SIGLIP_TEXT, vision_config=VISION)),
        "siglip2": transformers.Siglip2Model(transformers.Siglip2Config(text_config=SIGLIP_TEXT,
                                                                        vision_config=SIGLIP2_VISION)),
        "altclip": transformers.AltCLIPModel(transformers.AltCLIPConfig(
            text_config=dict(TEXT, max_position_embeddings=24, project_dim=16), vision_config=VISION,
            projection_dim=16)),
        "chinese_clip": transformers.ChineseCLIPModel(transformers.ChineseCLIPConfig(
            text_config=dict(TEXT, max_position_embeddings=24), vision_config=VISION, projection_dim=16)),
    }


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("loose_ends")
    for name, model in _hf_models().items():
        model.save_pretrained(root / name)
    return root


def _copy(folders: Path, tmp_path: Path, family: str) -> Path:
    folder = tmp_path / family
    shutil.copytree(folders / family, folder)
    return folder


# ------------------------------------------------------------------------------------ 1. allow_unsafe_pickle


def _to_protocol_5_bin(folder: Path, sharded: bool = False) -> None:
    """Replace model.safetensors by a trusted legacy pickle weights_only refuses (protocol 5): one
    pytorch_model.bin, or two shards + pytorch_model.bin.index.json."""
    from safetensors.torch import load_file

    tensors = load_file(folder / hf.SAFE_WEIGHTS_NAME)
    (folder / hf.SAFE_WEIGHTS_NAME).unlink()
    if not sharded:
        torch.save(tensors, folder / hf.BIN_WEIGHTS_NAME, pickle_protocol=5)
        return
    keys = sorted(tensors)
    halves = {"pytorch_model-00001-of-00002.bin": keys[::2], "pytorch_model-00002-of-00002.bin": keys[1::2]}
    weight_map = {}
    for shard, names in halves.items():
        torch.save({k: tensors[k] for k in names}, folder / shard, pickle_protocol=5)
        weight_map.update(dict.fromkeys(names, shard))
    (folder / hf.BIN_INDEX_NAME).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol 5")
@pytest.mark.parametrize(
    "family,sharded",
    [("clip", False), ("clip", True), ("siglip", False), ("siglip2", False), ("altclip", False),
     ("chinese_clip", False)],
    ids=["clip", "clip-sharded", "siglip", "siglip2", "altclip", "chinese_clip"],
)
def test_unsafe_pickle_opt_in_reaches_every_hf_folder_reader(folders, tmp_path, family, sharded):
    reference = clipforge.load_model(folders / family)
    folder = _copy(folders, tmp_path, family)
    _to_protocol_5_bin(folder, sharded)
    with pytest.raises(UnsafeCheckpointError, match="pickle protocol 4 or 5"):
        clipforge.load_model(folder)  # default stays safe: weights_only
    model = clipforge.load_model(folder, allow_unsafe_pickle=True)
    for key, value in reference.state_dict().items():  # the same tensors as the safetensors folder
        assert torch.equal(model.state_dict()[key], value), key


# ------------------------------------------------------------------------------------ 2. second configs under safeio


def _fifo(path: Path) -> None:
    if path.exists():
        path.unlink()
    os.mkfifo(path)


def _siglip_config(folder: Path) -> None:
    _fifo(folder / "config.json")
    hf_siglip.read_hf_siglip_config(folder / "config.json")


def _siglip_dir(folder: Path) -> None:
    _fifo(folder / "config.json")
    hf_siglip.read_hf_siglip_dir(folder)


def _altclip_dir(folder: Path) -> None:
    _fifo(folder / "config.json")
    hf_altclip.read_hf_altclip_dir(folder)


def _chinese_clip_dir(folder: Path) -> None:
    _fifo(folder / "config.json")
    hf_chinese_clip.read_hf_chinese_clip_dir(folder)


def _tokenizer_config(folder: Path) -> None:
    (folder / "tokenizer.json").write_text("{}")  # a tokenizer is there, so its config is read for the length
    _fifo(folder / "tokenizer_config.json")
    clipforge.load_model(folder)


def _preprocessor_config(folder: Path) -> None:
    _fifo(folder / "preprocessor_config.json")
    clipforge.load_model(folder)


def _shard_index(folder: Path) -> None:
    (folder / hf.SAFE_WEIGHTS_NAME).unlink()
    _fifo(folder / hf.SAFE_INDEX_NAME)
    clipforge.load_model(folder)


FIFO_CASES = [  # (family folder, what is made a FIFO and read, the file the error must name)
    ("siglip", _siglip_config, "config.json"),
    ("siglip", _siglip_dir, "config.json"),
    ("altclip", _altclip_dir, "config.json"),
    ("chinese_clip", _chinese_clip_dir, "config.json"),
    ("altclip", _tokenizer_config, "tokenizer_config.json"),
    ("chinese_clip", _preprocessor_config, "preprocessor_config.json"),
    ("clip", _preprocessor_config, "preprocessor_config.json"),
    ("siglip", _preprocessor_config, "preprocessor_config.json"),
    ("siglip2", _preprocessor_config, "preprocessor_config.json"),
    ("clip", _shard_index, hf.SAFE_INDEX_NAME),
]


@pytest.mark.parametrize("family,read,name", FIFO_CASES, ids=[f"{c[0]}-{c[1].__name__[1:]}" for c in FIFO_CASES])
def test_fifo_second_config_is_a_checkpoint_error_naming_it(folders, tmp_path, family, read, name):
    folder = _copy(folders, tmp_path, family)
    exc = finishes(lambda: read(folder))
    assert isinstance(exc, CheckpointError), repr(exc)
    assert "FIFO" in str(exc) and str(folder / name) in str(exc), str(exc)
    assert "not valid JSON" not in str(exc)  # said as what it is, not as a parse error


# ------------------------------------------------------------------------------------ 3. the depth error names the file


@pytest.mark.parametrize("family", ["altclip", "chinese_clip"])
def test_text_encoder_depth_error_names_config_json(folders, tmp_path, family):
    folder = _copy(folders, tmp_path, family)
    config = json.loads((folder / "config.json").read_text())
    config["text_config"]["num_hidden_layers"] = 1000
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="num_hidden_layers=1000 must be a positive int") as info:
        clipforge.load_model(folder)
    assert str(folder / "config.json") in str(info.value)


# ------------------------------------------------------------------------------------ 4. Siglip2Model tokenizer files


def _gemma_like_tokenizer(folder: Path) -> None:
    """A tiny tokenizer.json (BPE over single characters, "▁" for spaces, </s> appended) + its config, as a
    Siglip2Model folder carries GemmaTokenizerFast's."""
    vocab = {"<pad>": 0, "</s>": 1, "<bos>": 2, "<unk>": 3, **{c: 4 + i for i, c in enumerate("abcdefghij▁")}}
    tok = tokenizers.Tokenizer(tokenizers.models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.normalizer = tokenizers.normalizers.Replace(" ", "▁")
    tok.post_processor = tokenizers.processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "pad_token": "<pad>", "eos_token": "</s>",
        "unk_token": "<unk>", "model_max_length": 16,
    }))


def test_siglip2_folder_is_written_with_the_tokenizer_it_was_read_with(folders, tmp_path):
    source = _copy(folders, tmp_path, "siglip2")
    _gemma_like_tokenizer(source)
    model = clipforge.load_model(source)
    assert model.config.text.hf_tokenizer_name == str(source)
    out = hf_siglip2.write_hf_siglip2_dir(model, tmp_path / "written")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (out / name).read_bytes() == (source / name).read_bytes(), name
    texts = ["a cab", "J I H G"]
    expected = transformers.AutoTokenizer.from_pretrained(source)(texts)["input_ids"]
    assert transformers.AutoTokenizer.from_pretrained(out)(texts)["input_ids"] == expected
    ids = clipforge.get_tokenizer(f"local-dir:{source}")(texts)
    assert torch.equal(clipforge.get_tokenizer(f"local-dir:{out}")(texts), ids)
    assert torch.equal(clipforge.get_tokenizer(model)(texts), ids)  # the model knows its tokenizer now
    # "a▁cab", </s>, padded with <pad> on the side transformers pads this folder on: no padding_side in
    # tokenizer_config.json, so Siglip2Tokenizer's default, the left (text/hf_tokenizer.py gemma_tokenizer).
    assert ids[0, -7:].tolist() == [0] + expected[0] == [0, 4, 14, 6, 4, 5, 1]
    padded = transformers.AutoTokenizer.from_pretrained(source)(texts, padding="max_length", max_length=ids.shape[1])
    assert ids.tolist() == padded["input_ids"]
    reread = clipforge.load_model(out)  # and the written folder reads back with the same weights
    for key, value in model.state_dict().items():
        assert torch.equal(reread.state_dict()[key], value), key


def test_siglip2_written_without_a_local_tokenizer_gets_none(folders, tmp_path):
    model = clipforge.load_model(folders / "siglip2")  # no tokenizer in that folder
    assert model.config.text.hf_tokenizer_name is None
    out = hf_siglip2.write_hf_siglip2_dir(model, tmp_path / "written")
    assert not any((out / name).exists() for name in hf_siglip2.SIGLIP2_TOKENIZER_FILES)


# ------------------------------------------------------------------------------------ 5. big_vision image_size


def _bigvision_helpers():
    """tests/weights/test_bigvision.py's SiglipModel -> big_vision arrays builder (loaded by path: pytest runs with
    --import-mode=importlib, so test modules are not importable by name)."""
    path = Path(__file__).with_name("test_bigvision.py")
    spec = importlib.util.spec_from_file_location("_bigvision_helpers", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def npz_path(tmp_path_factory) -> Path:
    helpers = _bigvision_helpers()
    model = helpers._reference()  # image 32, patch 8: a 4x4 grid
    sd = {k: v.detach() for k, v in model.state_dict().items() if "position_ids" not in k}
    path = tmp_path_factory.mktemp("npz") / "webli_tiny.npz"
    np.savez(path, **helpers._to_big_vision(sd))
    return path


def test_npz_reads_at_an_explicit_image_size_that_floors_to_its_grid(npz_path):
    default_cfg, default_sd = read_big_vision_npz(npz_path)
    assert default_cfg.vision.image_size == 32  # grid x patch
    cfg, sd = read_big_vision_npz(npz_path, image_size=39)  # floor(39 / 8) = 4: the same grid
    assert cfg.vision.image_size == 39 and cfg.preprocess.size == 39
    assert cfg.vision.patch_size == 8 and sd.keys() == default_sd.keys()
    model, at_grid = build_model(cfg, sd).eval(), build_model(default_cfg, default_sd).eval()
    image = torch.randn(1, 3, 39, 39, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # the tower floors the grid: the last 7 pixel rows and columns are ignored
        assert_close_rel(model.encode_image(image), at_grid.encode_image(image[..., :32, :32]), 1e-5, "features")


@pytest.mark.parametrize("size,message", [
    (40, r"image_size=40 does not fit .* 4x4 patches of 8 pixels, so the image side must be in \[32, 39\]"),
    (31, r"image_size=31 does not fit"),
    (0, "image_size=0 must be a positive int"),
    (32.0, r"image_size=32.0 must be a positive int"),
])
def test_npz_image_size_that_does_not_fit_the_grid_is_refused(npz_path, size, message):
    with pytest.raises(CheckpointError, match=message) as info:
        read_big_vision_npz(npz_path, image_size=size)
    assert str(npz_path) in str(info.value)


# ------------------------------------------------------------------ config files that are JSON but not an object
def _config_readers():
    from clipforge.weights import hf, hf_altclip, hf_chinese_clip, hf_siglip, hf_siglip2, loading

    return {
        "clip": lambda folder: hf.read_hf_config(folder / "config.json"),
        "siglip": lambda folder: hf_siglip.read_hf_siglip_config(folder / "config.json"),
        "siglip2": lambda folder: hf_siglip2.read_hf_siglip2_config(folder / "config.json"),
        "altclip": lambda folder: hf_altclip.read_hf_altclip_dir(folder),
        "chinese_clip": lambda folder: hf_chinese_clip.read_hf_chinese_clip_dir(folder),
        "openclip": lambda folder: loading._openclip_json_config(folder / "config.json"),
    }


@pytest.mark.parametrize("reader", ["clip", "siglip", "siglip2", "altclip", "chinese_clip", "openclip"])
def test_config_json_that_is_not_an_object_is_refused_naming_the_file(reader, tmp_path):
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match=r"config\.json.*JSON object"):
        _config_readers()[reader](tmp_path)
