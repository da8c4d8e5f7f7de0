"""HFTokenizer (text/hf_tokenizer.py): the ids open_clip's HFTokenizer and transformers give for the same file.

The vocabulary is a tiny Unigram tokenizer trained here on Latin, CJK, Arabic, Devanagari, Cyrillic and emoji
text with XLM-R's special tokens (tests/support/hf_text.py), saved as a hub-style folder.
"""

from __future__ import annotations

import pytest
import torch

from clipforge.text.hf_tokenizer import HFTokenizer, clean_whitespace
from support.hf_text import make_hf_text_folder

pytest.importorskip("transformers")  # the HF text tower builds a transformers encoder

TEXTS = [
    "a photo of a cat",
    "  Une   photo\td'un chat\n",
    "一只猫坐在红色的桌子上",
    "صورة قطة تجلس على الطاولة",
    "लाल मेज पर बैठी एक बिल्ली की तस्वीर",
    "a cat 🐱 with a heart ❤️ 🇫🇷",
    "caf&eacute; &amp;amp; Ångström",
    "",
    "a photo of a cat sitting on the red table " * 6,  # truncated
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_hf_text_folder(tmp_path_factory.mktemp("tok"))[0]


@pytest.mark.parametrize("length", [8, 32])
def test_ids_match_open_clip_hf_tokenizer(folder, length):
    open_clip = pytest.importorskip("open_clip")
    expected = open_clip.tokenizer.HFTokenizer(str(folder), context_length=length)(TEXTS)
    actual = HFTokenizer(folder, length)(TEXTS)
    assert actual.dtype == torch.long and actual.shape == (len(TEXTS), length)
    assert torch.equal(actual, expected)


def test_ids_match_transformers_and_the_rules(folder):
    """Start token first, end token kept at the end of a truncated row, right padding with <pad> (id 1)."""
    from transformers import AutoTokenizer

    tokenizer = HFTokenizer(folder, 16)
    ids = tokenizer(TEXTS)
    auto = AutoTokenizer.from_pretrained(str(folder))
    cleaned = [clean_whitespace(t) for t in TEXTS]
    expected = auto(cleaned, max_length=16, padding="max_length", truncation=True, return_tensors="pt").input_ids
    assert torch.equal(ids, expected)
    assert tokenizer.pad_token_id == 1
    assert (ids[:, 0] == 0).all()
    assert ids[-1, -1] == 2  # truncated: </s> kept
    assert ids[-2].tolist() == [0, 2] + [1] * 14  # the empty text
    assert tokenizer(TEXTS[0], context_length=40).shape == (1, 40)


def test_auto_tokenizer_path_gives_the_same_ids(folder, tmp_path):
    """The AutoTokenizer branch (hub names, folders without tokenizer.json) pads and truncates alike."""
    tokenizer = HFTokenizer(folder, 16)
    auto = HFTokenizer.__new__(HFTokenizer)
    from transformers import AutoTokenizer

    auto.__dict__.update(source=str(folder), context_length=16, _fast=None, pad_token_id=1)
    auto._auto = AutoTokenizer.from_pretrained(str(folder))
    assert torch.equal(auto(TEXTS), tokenizer(TEXTS))


def test_cleaning_keeps_case_and_unescapes():
    assert clean_whitespace("  A&amp;amp;B \n\t C ") == "A&B C"


def test_decode_round_trip(folder):
    tokenizer = HFTokenizer(folder, 32)
    assert tokenizer.decode(tokenizer("a photo of a cat")[0]) == "a photo of a cat"


def test_bad_inputs(folder, tmp_path):
    tokenizer = HFTokenizer(folder, 16)
    with pytest.raises(TypeError, match=r"texts\[1\] is int"):
        tokenizer(["a", 3])
    with pytest.raises(ValueError, match="context_length"):
        HFTokenizer(folder, 1)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match="tokenizer.json"):
        HFTokenizer(broken)
    assert tokenizer([]).shape == (0, 16)


def test_get_tokenizer_of_an_hf_text_model(folder):
    import json

    from clipforge import get_tokenizer
    from clipforge.models import CLIPConfig, TextConfig

    fields = json.loads((folder / "config.json").read_text())
    config = CLIPConfig(text=TextConfig(context_length=24, hf_config=fields, hf_tokenizer_name=str(folder)))
    tokenizer = get_tokenizer(config)
    assert isinstance(tokenizer, HFTokenizer) and tokenizer.context_length == 24
    assert torch.equal(tokenizer(TEXTS), HFTokenizer(folder, 24)(TEXTS))
    with pytest.raises(ValueError, match="names no tokenizer"):
        get_tokenizer(CLIPConfig(text=TextConfig(hf_config=fields)))
