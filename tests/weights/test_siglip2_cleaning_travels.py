"""A SigLIP 2 model keeps its text cleaning through save / convert (`text.tokenizer_clean`).

A transformers Siglip2Model folder is tokenized as AutoTokenizer reads it (Siglip2Tokenizer: lowercased, nothing
else); the reader records that as "lowercase_only", so a clipforge copy -- moved, source deleted, so no
config.json model_type "siglip2" is left to sniff -- gives the same ids. A folder without that config.json
(open_clip's SigLIP 2 layout) keeps open_clip's "canonicalize" through the same trip. open_clip's format has no
lowercase-only cleaning: its writer puts its nearest ("lower") and warns.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
open_clip = pytest.importorskip("open_clip")

import clipforge  # noqa: E402
from clipforge.models.clip import CLIP  # noqa: E402
from clipforge.models.registry import get_model_config  # noqa: E402
from clipforge.text.hf_tokenizer import gemma_tokenizer  # noqa: E402
from clipforge.weights import native, openclip  # noqa: E402
from clipforge.weights.hf_siglip2 import GEMMA_VOCAB_SIZE  # noqa: E402
from support.gemma_tokenizer import CORPUS, EXTRA, make_gemma_folder  # noqa: E402

PROBE = "A photo, of a CAT!"
TEXTS = [PROBE] + CORPUS + EXTRA
LENGTH = 64


def _tiny_siglip2() -> CLIP:
    torch.manual_seed(0)
    base = clipforge.create_model("tiny-siglip2")
    # Gemma's vocabulary size makes the hf writer write a Siglip2Model (config.json model_type "siglip2").
    text = dataclasses.replace(base.config.text, vocab_size=GEMMA_VOCAB_SIZE, width=16, heads=1)
    return CLIP(base.config.replace(text=text))


def _auto_ids(folder: Path) -> torch.Tensor:
    """transformers' AutoTokenizer on the folder, as its Siglip2Processor calls it (text unchanged)."""
    tok = transformers.AutoTokenizer.from_pretrained(str(folder))
    assert type(tok).__name__.startswith("Siglip2"), type(tok).__name__
    return tok(TEXTS, padding="max_length", max_length=LENGTH, truncation=True, return_tensors="pt").input_ids


def _move(out: Path, root: Path) -> Path:
    moved = root / "elsewhere" / "moved"
    moved.parent.mkdir(parents=True)
    shutil.move(str(out), str(moved))
    return moved


def test_siglip2_folder_saved_in_clipforge_format_keeps_lowercase_only(tmp_path):
    source = clipforge.save_model(_tiny_siglip2(), tmp_path / "src", format="hf")
    assert json.loads((source / "config.json").read_text())["model_type"] == "siglip2"
    make_gemma_folder(source, "siglip2")
    want = _auto_ids(source)  # (N, LENGTH)

    model = clipforge.load_model(str(source))
    assert model.config.text.tokenizer_clean == "lowercase_only"
    assert clipforge.get_tokenizer(model, context_length=LENGTH)(TEXTS).tolist() == want.tolist()
    moved = _move(clipforge.save_model(model, tmp_path / "out", format="clipforge"), tmp_path)
    shutil.rmtree(source)
    assert not (moved / "config.json").exists()  # nothing left to sniff: the config carries the cleaning
    written = json.loads((moved / native.CONFIG_NAME).read_text())["model"]["text"]
    assert written["tokenizer_clean"] == "lowercase_only"

    reloaded = clipforge.load_model(str(moved))
    assert reloaded.config.text.tokenizer_clean == "lowercase_only"
    by_model = clipforge.get_tokenizer(reloaded, context_length=LENGTH)(TEXTS)
    by_local_dir = clipforge.get_tokenizer(f"local-dir:{moved}", context_length=LENGTH)(TEXTS)
    assert by_model.tolist() == want.tolist()
    assert by_local_dir.tolist() == want.tolist()
    # the probe is one whose ids the folder's own default (canonicalize: no config.json there) would change
    sniffed = gemma_tokenizer(moved, LENGTH)([PROBE])
    assert sniffed.tolist() != want[:1].tolist()


def test_convert_keeps_lowercase_only(tmp_path):
    """clipforge.convert (what `clipforge convert` runs) from a Siglip2Model folder to clipforge format."""
    source = clipforge.save_model(_tiny_siglip2(), tmp_path / "src", format="hf")
    make_gemma_folder(source, "siglip2")
    want = _auto_ids(source)
    moved = _move(clipforge.convert(str(source), tmp_path / "out"), tmp_path)
    shutil.rmtree(source)
    got = clipforge.get_tokenizer(clipforge.load_model(str(moved)), context_length=LENGTH)(TEXTS)
    assert got.tolist() == want.tolist()


def test_open_clip_style_folder_keeps_canonicalize(tmp_path):
    """A SigLIP 2 tokenizer folder with no transformers config.json (open_clip's timm/* layout): canonicalised
    before and after a clipforge save, as open_clip's HFTokenizer(clean="canonicalize") reads the original."""
    tok = make_gemma_folder(tmp_path / "timm-tok", "siglip2")
    want = open_clip.tokenizer.HFTokenizer(str(tok), context_length=LENGTH, clean="canonicalize")(TEXTS)
    model = clipforge.create_model("tiny-siglip2")
    cfg = model.config.replace(text=dataclasses.replace(model.config.text, hf_tokenizer_name=str(tok)))
    assert cfg.text.tokenizer_clean == "whitespace"  # the family default: the folder decides
    assert clipforge.get_tokenizer(cfg, context_length=LENGTH)(TEXTS).tolist() == want.tolist()
    moved = _move(native.write_native(cfg, model.state_dict(), tmp_path / "out"), tmp_path)
    shutil.rmtree(tok)
    reloaded = clipforge.load_model(str(moved))
    assert reloaded.config.text.hf_tokenizer_name == str(moved.resolve())
    assert clipforge.get_tokenizer(reloaded, context_length=LENGTH)(TEXTS).tolist() == want.tolist()
    assert clipforge.get_tokenizer(f"local-dir:{moved}", context_length=LENGTH)(TEXTS).tolist() == want.tolist()


def test_config_cleaning_wins_over_the_folder(tmp_path):
    """A model config that says "canonicalize" is tokenized so even from a transformers Siglip2Model folder, and
    one that says "lowercase_only" from a folder that would canonicalise."""
    folder = clipforge.save_model(_tiny_siglip2(), tmp_path / "hf", format="hf")
    make_gemma_folder(folder, "siglip2")
    cfg = clipforge.load_model(str(folder)).config
    canon = cfg.replace(text=dataclasses.replace(cfg.text, tokenizer_clean="canonicalize"))
    theirs = open_clip.tokenizer.HFTokenizer(str(folder), context_length=LENGTH, clean="canonicalize")(TEXTS)
    assert clipforge.get_tokenizer(canon, context_length=LENGTH)(TEXTS).tolist() == theirs.tolist()
    assert gemma_tokenizer(folder, LENGTH)(TEXTS).tolist() == _auto_ids(folder).tolist()  # no config: sniffed
    with pytest.raises(ValueError, match="tokenizer_clean"):
        gemma_tokenizer(folder, LENGTH, clean="bogus")


def test_canonicalize_model_written_as_siglip2_reads_back_lowercase_only(tmp_path):
    """The target format's limit (write_hf_siglip2_dir docstring): written anyway, read back as transformers reads
    it, so clipforge and AutoTokenizer agree on the written folder."""
    model = _tiny_siglip2()
    model = CLIP(model.config.replace(text=dataclasses.replace(model.config.text, tokenizer_clean="canonicalize")))
    out = clipforge.save_model(model, tmp_path / "hf", format="hf")
    make_gemma_folder(out, "siglip2")
    back = clipforge.load_model(str(out))
    assert back.config.text.tokenizer_clean == "lowercase_only"
    assert clipforge.get_tokenizer(back, context_length=LENGTH)(TEXTS).tolist() == _auto_ids(out).tolist()


def test_open_clip_writer_has_no_lowercase_only_and_warns():
    """open_clip's get_clean_fn knows whitespace / lower / canonicalize only: "lower" is written, with a warning,
    and read back as "lower" (what open_clip uses on the folder); a SigLIP config's canonicalize stays the
    family default."""
    cfg = get_model_config("ViT-B-16-SigLIP2")
    plain = openclip.config_to_openclip(cfg)
    assert plain["model_cfg"]["text_cfg"]["tokenizer_kwargs"] == {"clean": "canonicalize"}
    assert openclip.config_from_openclip(plain["model_cfg"], plain["preprocess_cfg"]).text == cfg.text

    lower_only = cfg.replace(text=dataclasses.replace(cfg.text, tokenizer_clean="lowercase_only"))
    with pytest.warns(UserWarning, match="clean='lower'"):
        written = openclip.config_to_openclip(lower_only)
    kwargs = written["model_cfg"]["text_cfg"]["tokenizer_kwargs"]
    assert kwargs == {"clean": "lower"}
    open_clip.tokenizer.get_clean_fn(kwargs["clean"])  # open_clip accepts what was written
    back = openclip.config_from_openclip(written["model_cfg"], written["preprocess_cfg"])
    assert back.text.tokenizer_clean == "lower"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        openclip.config_to_openclip(back)  # "lower" is open_clip's own: no warning
