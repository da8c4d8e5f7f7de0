"""Behaviour of `CLIPTokenizer` (CLIP, Radford et al. 2021; OpenAI's simple_tokenizer): shapes, the truncation
and padding rule, special tokens, decoding, and input errors.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clipforge.text import CLIPTokenizer, tokenize

SOT, EOT = 49406, 49407


@pytest.fixture(scope="module")
def tok() -> CLIPTokenizer:
    return CLIPTokenizer()


def test_attributes(tok: CLIPTokenizer) -> None:
    assert (tok.sot_token_id, tok.eot_token_id, tok.vocab_size, tok.context_length) == (SOT, EOT, 49408, 77)


def test_known_ids(tok: CLIPTokenizer) -> None:
    assert tok.encode("a photo of a cat") == [320, 1125, 539, 320, 2368]
    row = tok("A photo of a CAT.")[0]
    assert row[:8].tolist() == [SOT, 320, 1125, 539, 320, 2368, 269, EOT]
    assert not row[8:].any()


def test_shapes_and_dtype(tok: CLIPTokenizer) -> None:
    assert tok("a dog").shape == (1, 77)
    assert tok(["a dog", "a cat", ""]).shape == (3, 77)
    assert tok(("a dog", "a cat")).shape == (2, 77)  # any iterable of str
    assert tok(t for t in ["a dog"]).shape == (1, 77)
    assert tok(["a dog"], context_length=16).shape == (1, 16)
    assert CLIPTokenizer(context_length=32)("a dog").shape == (1, 32)
    assert tok("a dog").dtype == torch.long


def test_empty_inputs(tok: CLIPTokenizer) -> None:
    assert tok([]).shape == (0, 77)
    assert tok([], context_length=5).shape == (0, 5)
    assert CLIPTokenizer(backend="reference")([]).shape == (0, 77)
    for text in ["", "   ", "\t\n"]:
        assert tok(text)[0, :3].tolist() == [SOT, EOT, 0]
        assert tok.encode(text) == []


@pytest.mark.parametrize("context_length", [4, 10, 77])
def test_truncation_keeps_end_token_last(tok: CLIPTokenizer, context_length: int) -> None:
    text = " ".join(f"word{i}" for i in range(200))
    ids = tok.encode(text)
    row = tok(text, context_length=context_length)[0].tolist()
    assert row == [SOT] + ids[: context_length - 2] + [EOT]


def test_truncation_boundary(tok: CLIPTokenizer) -> None:
    fits = " ".join(["dog"] * 75)  # 75 tokens + start + end = 77
    assert tok(fits)[0].tolist() == [SOT] + [1929] * 75 + [EOT]
    over = fits + " cat"
    assert tok(over)[0].tolist() == [SOT] + [1929] * 75 + [EOT]
    assert tok("dog", context_length=1)[0].tolist() == [EOT]  # open_clip: [sot, ...][:1], last -> eot
    assert tok("dog", context_length=2)[0].tolist() == [SOT, EOT]


def test_special_token_strings_in_text(tok: CLIPTokenizer) -> None:
    assert tok.encode("<start_of_text>") == [SOT]
    assert tok.encode("x <END_OF_TEXT> y") == [343, EOT, 344]
    assert SOT not in tok.encode("!!<start_of_text>")  # the symbol run swallows the "<"


def test_mixed_batch_keeps_order(tok: CLIPTokenizer) -> None:
    texts = ["a dog", "café", "a &amp; b", "東京", "<start_of_text>", "a cat", ""]
    batch = tok(texts)
    for i, text in enumerate(texts):
        assert torch.equal(batch[i], tok(text)[0]), text


def test_backends_agree(tok: CLIPTokenizer) -> None:
    texts = ["A photo of a dog.", "naïve café", "&lt;b&gt;bold&lt;/b&gt;", "🙂 emoji", "it's 3.14!!"]
    assert torch.equal(tok(texts), CLIPTokenizer(backend="reference")(texts))


def test_decode_round_trip(tok: CLIPTokenizer) -> None:
    for text in ["a photo of a cat", "two dogs playing in the snow, 2 balls!", "café crème", "東京タワー"]:
        assert tok.decode(tok.encode(text)) == text.replace(",", " ,").replace("!", " !") + " "
    row = tok("a photo of a cat")[0]
    assert tok.decode(row, skip_special_tokens=True) == "a photo of a cat "
    assert tok.decode(row[:7]) == "<start_of_text>a photo of a cat <end_of_text>"
    assert tok.decode(np.array([320, 2368])) == "a cat "


def test_decode_stops_at_the_end_token(tok: CLIPTokenizer) -> None:
    """A padded row decodes without its padding (id 0 is "!"): nothing after the end token is text."""
    row = tok("a photo of a cat")[0]
    assert row[-1] == 0  # padded
    assert tok.decode(row) == "<start_of_text>a photo of a cat <end_of_text>"
    assert "!" not in tok.decode(row.numpy())
    assert tok.decode([*row[:7].tolist(), 320, 0, 0]) == "<start_of_text>a photo of a cat <end_of_text>"
    assert tok.decode(tok.encode("hi !!") + [0]) == "hi !! !"  # no end token: an id 0 is a real "!"


def test_bad_input(tok: CLIPTokenizer) -> None:
    with pytest.raises(TypeError, match=r"texts\[1\] is int"):
        tok(["a dog", 3])
    with pytest.raises(TypeError, match=r"texts\[2\] is NoneType"):
        tokenize(["a", "b", None])
    with pytest.raises(TypeError, match="str or a sequence of str, got int"):
        tok(5)
    with pytest.raises(TypeError, match="got bytes"):
        tok(b"a dog")
    with pytest.raises(TypeError, match="must be a str"):
        tok.encode(["a dog"])
    for bad in [0, -1, 2.5, True]:
        with pytest.raises(ValueError, match="context_length"):
            tok("a dog", context_length=bad)
    with pytest.raises(ValueError, match="context_length"):
        CLIPTokenizer(context_length=0)
    with pytest.raises(ValueError, match="backend"):
        CLIPTokenizer(backend="hf")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([49408])
    with pytest.raises(ValueError, match="1-D"):
        tok.decode(tok(["a", "b"]))
