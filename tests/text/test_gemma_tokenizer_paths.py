"""Every clipforge path to a SigLIP 2 (Gemma tokenizer.json) folder gives the references' ids.

The paths: `get_tokenizer(model)` (the model read from / pointing at the folder: factory `_sentencepiece_tokenizer`)
and `get_tokenizer("local-dir:FOLDER")` (`load_siglip_tokenizer`) -- they once differed (one framed with the file's
`<bos>` post-processor, the other lowercased, dropped it and appended `<eos>`). The references: transformers'
AutoTokenizer on the folder (+ the model's cleaning) and open_clip's HFTokenizer on it. Folder layouts
(support/gemma_tokenizer.py VARIANTS): the real repositories' files ("siglip2": `$A <eos>` + add_*_token flags),
stock Gemma (`<bos> $A`), the flags over a `<bos>` post-processor (AutoTokenizer follows the file) and a bare
tokenizer.json; each as an open_clip-style folder (open_clip's SigLIP 2 cleaning, "canonicalize") and as a
transformers Siglip2Model folder (config.json model_type "siglip2": Siglip2Tokenizer lowercases, nothing else).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

transformers = pytest.importorskip("transformers")
open_clip = pytest.importorskip("open_clip")

import clipforge  # noqa: E402
from clipforge.models.clip import CLIP  # noqa: E402
from clipforge.weights.hf_siglip2 import GEMMA_VOCAB_SIZE  # noqa: E402
from support.gemma_tokenizer import CORPUS, EXTRA, VARIANTS, make_gemma_folder  # noqa: E402

TEXTS = CORPUS + EXTRA
KINDS = ("open_clip", "transformers")
CASES = [(variant, kind) for variant in VARIANTS for kind in KINDS]
PAD, EOS, BOS = 0, 1, 2


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """(variant, kind) -> (folder, model whose text.hf_tokenizer_name is that folder)."""
    root = tmp_path_factory.mktemp("gemma_paths")
    torch.manual_seed(0)
    base = clipforge.create_model("tiny-siglip2")
    # Gemma's vocabulary size makes the hf writer write a Siglip2Model (config.json model_type "siglip2").
    text = dataclasses.replace(base.config.text, vocab_size=GEMMA_VOCAB_SIZE, width=16, heads=1)
    written = {
        "open_clip": clipforge.save_model(base, root / "clipforge-model", format="clipforge"),
        "transformers": clipforge.save_model(CLIP(base.config.replace(text=text)), root / "hf-model", format="hf"),
    }
    assert json.loads((written["transformers"] / "config.json").read_text())["model_type"] == "siglip2"
    out = {}
    for variant, kind in CASES:
        folder = root / f"{kind}-{variant}"
        shutil.copytree(written[kind], folder)
        make_gemma_folder(folder, variant)
        model = clipforge.load_model(str(folder))
        config = model.config.replace(text=dataclasses.replace(model.config.text, hf_tokenizer_name=str(folder)))
        out[variant, kind] = folder, config
    return out


def _clean(kind: str, text: str) -> str:
    """The model's cleaning, by the reference's own code: open_clip's SigLIP 2 tokenizer_kwargs clean="canonicalize";
    transformers' Siglip2Processor hands the text to its tokenizer unchanged."""
    if kind == "open_clip":
        return open_clip.tokenizer.canonicalize_text(open_clip.tokenizer.basic_clean(text))
    return text


def _auto_ids(folder, kind: str, length: int) -> torch.Tensor:
    """transformers' AutoTokenizer on the folder (the processor's padding="max_length", truncation)."""
    tok = transformers.AutoTokenizer.from_pretrained(str(folder))
    texts = [_clean(kind, t) for t in TEXTS]
    if tok.pad_token_id is not None:
        return tok(texts, padding="max_length", max_length=length, truncation=True, return_tensors="pt").input_ids
    # A bare tokenizer.json names no pad token: AutoTokenizer cannot pad; clipforge pads with Gemma's <pad>.
    assert tok.padding_side == "right"
    rows = tok(texts, max_length=length, truncation=True).input_ids
    return torch.tensor([row + [PAD] * (length - len(row)) for row in rows])


@pytest.mark.parametrize(("variant", "kind"), CASES)
@pytest.mark.parametrize("length", [64, 12])
def test_every_path_gives_the_references_ids(folders, variant, kind, length):
    folder, config = folders[variant, kind]
    want = _auto_ids(folder, kind, length)  # (N, length)
    by_model = clipforge.get_tokenizer(config, context_length=length)(TEXTS)
    by_local_dir = clipforge.get_tokenizer(f"local-dir:{folder}", context_length=length)(TEXTS)
    assert by_model.dtype == torch.int64 and by_model.shape == (len(TEXTS), length)
    assert by_model.tolist() == want.tolist()
    assert by_local_dir.tolist() == want.tolist()
    if kind == "open_clip" and variant != "json-only":  # open_clip's HFTokenizer needs a pad token to pad
        theirs = open_clip.tokenizer.HFTokenizer(str(folder), context_length=length, clean="canonicalize")
        assert by_model.tolist() == theirs(TEXTS).tolist()


def test_the_files_framing_is_what_the_ids_carry(folders):
    """The real repositories' files frame `pieces <eos>` (right-padded); a <bos> post-processor frames `<bos>
    pieces` even under add_bos_token false / add_eos_token true, as transformers 5 reads it."""
    from tokenizers import Tokenizer

    for variant, bos, eos in [("siglip2", False, True), ("flags-only", True, False), ("stock", True, False)]:
        folder, config = folders[variant, "open_clip"]
        raw = Tokenizer.from_file(str(folder / "tokenizer.json"))
        text = _clean("open_clip", "A photo of a CAT!")
        pieces = raw.encode(text, add_special_tokens=False).ids
        row = clipforge.get_tokenizer(config, context_length=24)([text])[0].tolist()
        want = [BOS] * bos + pieces + [EOS] * eos
        assert row == want + [PAD] * (24 - len(want)), variant


def test_transformers_folder_lowercases_without_canonicalising(folders):
    """A Siglip2Model folder keeps punctuation and "_" (no open_clip cleaning) but lowercases, by tokenizers'
    Lowercase (a final capital sigma stays "σ", str.lower gives "ς"); an open_clip folder canonicalises."""
    from tokenizers import Tokenizer, normalizers

    text = "UPPER_case, ΣΊΣΥΦΟΣ!"
    cases = [("transformers", normalizers.Lowercase().normalize_str(text)), ("open_clip", "upper case σίσυφος")]
    for kind, cleaned in cases:
        folder, config = folders["siglip2", kind]
        raw = Tokenizer.from_file(str(folder / "tokenizer.json"))
        want = raw.encode(cleaned, add_special_tokens=False).ids + [EOS]
        row = clipforge.get_tokenizer(config, context_length=40)([text])[0].tolist()
        assert row == want + [PAD] * (40 - len(want)), kind
    assert normalizers.Lowercase().normalize_str(text) == "upper_case, σίσυφοσ!"


def test_bare_transformers_folder_pads_on_the_left_as_autotokenizer(folders):
    """No tokenizer_config.json: Siglip2Tokenizer's class default pads on the left; clipforge pads the same side."""
    folder, config = folders["json-only", "transformers"]
    row = clipforge.get_tokenizer(config, context_length=16)(["a cat"])[0].tolist()
    assert row[0] == PAD and row[-1] != PAD


HUB_TOKENIZE = """
import dataclasses, json, sys, torch, clipforge
from clipforge.models.registry import get_model_config
config = get_model_config("tiny-siglip2")
config = config.replace(text=dataclasses.replace(config.text, hf_tokenizer_name=sys.argv[1]))
torch.save(clipforge.get_tokenizer(config)(json.load(open(sys.argv[2], encoding="utf-8"))), sys.argv[3])
"""


def test_hub_repository_is_read_as_its_folder(folders, tmp_path):
    """A hub repository named by text.hf_tokenizer_name gives the ids of its files read locally: a google/siglip2-*
    style repository (config.json model_type "siglip2") is lowercased only, a timm one canonicalised."""
    from support.hubserver import FakeHub

    repos = {"google/siglip2-tiny": folders["siglip2", "transformers"][0]}
    repos["timm/ViT-tiny-SigLIP2"] = folders["siglip2", "open_clip"][0]
    (tmp_path / "texts.json").write_text(json.dumps(TEXTS), encoding="utf-8")
    with FakeHub(repos) as url:
        for repo, folder in repos.items():
            out = tmp_path / f"{repo.replace('/', '-')}.pt"
            env = {**os.environ, "HF_ENDPOINT": url, "HF_HUB_CACHE": str(tmp_path / "cache")}
            env["HF_HUB_DISABLE_TELEMETRY"] = "1"
            result = subprocess.run(
                [sys.executable, "-c", HUB_TOKENIZE, repo, str(tmp_path / "texts.json"), str(out)],
                env=env, capture_output=True, text=True, timeout=120,
            )
            assert result.returncode == 0, result.stderr[-3000:]
            kind = "transformers" if repo.startswith("google/") else "open_clip"
            assert torch.load(out, weights_only=True).tolist() == _auto_ids(folder, kind, 64).tolist(), repo
