"""Hostile and odd tokenizer files and texts for the model-zoo tokenizers (issue 11): HFTokenizer (tokenizer.json of
XLM-R-style folders), SentencePieceTokenizer (SigLIP's spiece.model) and TokenizerJsonTokenizer (SigLIP 2's).

Files: a FIFO or a symlink to /dev/zero where the tokenizer file belongs must be refused at once (never block in
open(), never read an endless device), a file over the byte cap is refused before it is read, garbage is a
ValueError naming the file. Texts: longer than the context (cut, end token kept where the tokenizer keeps one),
empty, only emoji, only whitespace: always a (N, context) int64 row of valid ids, never an exception.
"""

from __future__ import annotations

import os

import pytest
import torch

from clipforge.text import hf_tokenizer, sentencepiece
from clipforge.text.hf_tokenizer import HFTokenizer
from clipforge.text.sentencepiece import SentencePieceTokenizer, TokenizerJsonTokenizer, load_siglip_tokenizer
from support.finishes import finishes
from support.hf_text import make_hf_text_folder

pytest.importorskip("tokenizers")
spm = pytest.importorskip("sentencepiece")

ODD_TEXTS = ["", " ", "\t\n", "🐱🐶🎉👨‍👩‍👧🇫🇷", "❤️" * 200, "a photo of a cat " * 100, "\x00\ufeff\u200b"]
CONTEXT = 12


@pytest.fixture(scope="module")
def xlmr_dir(tmp_path_factory):
    return make_hf_text_folder(tmp_path_factory.mktemp("xlmr_tok"))[0]


@pytest.fixture(scope="module")
def spiece_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("spm")
    corpus = folder / "corpus.txt"
    corpus.write_text("a photo of a cat\nun chat noir\n一只猫\nقطة\nबिल्ली\n🐱 cat emoji\n" * 20, encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(folder / "spiece"), vocab_size=60, hard_vocab_limit=False,
        model_type="unigram", character_coverage=1.0, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
        num_threads=1, minloglevel=2,
    )
    corpus.unlink()
    return folder


@pytest.fixture(scope="module")
def gemma_dir(tmp_path_factory):
    from tokenizers import Tokenizer, models, normalizers, trainers

    folder = tmp_path_factory.mktemp("gemma")
    tok = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tok.normalizer = normalizers.Replace(" ", "▁")
    specials = ["<pad>", "<eos>", "<bos>", "<unk>"] + [f"<0x{i:02X}>" for i in range(256)]
    tok.train_from_iterator(["a photo of a cat", "un chat"] * 10, trainers.BpeTrainer(
        vocab_size=300, special_tokens=specials, show_progress=False))
    tok.save(str(folder / "tokenizer.json"))
    return folder


def _copy_without(src, dst, name):
    dst.mkdir()
    for f in src.iterdir():
        if f.name != name and f.is_file():
            (dst / f.name).write_bytes(f.read_bytes())
    return dst / name


KINDS = [  # (fixture, file name, constructor)
    ("xlmr_dir", "tokenizer.json", lambda p: HFTokenizer(p, CONTEXT)),
    ("spiece_dir", "spiece.model", lambda p: SentencePieceTokenizer(p, CONTEXT)),
    ("gemma_dir", "tokenizer.json", lambda p: TokenizerJsonTokenizer(p, CONTEXT)),
]


@pytest.mark.parametrize("fixture,name,make", KINDS, ids=[k[0] for k in KINDS])
def test_fifo_tokenizer_file_is_refused_without_blocking(request, tmp_path, fixture, name, make):
    target = _copy_without(request.getfixturevalue(fixture), tmp_path / "f", name)
    os.mkfifo(target)
    exc = finishes(lambda: make(target.parent))
    assert isinstance(exc, OSError) and "FIFO" in str(exc) and name in str(exc)


@pytest.mark.parametrize("fixture,name,make", KINDS, ids=[k[0] for k in KINDS])
def test_symlink_to_dev_zero_is_refused(request, tmp_path, fixture, name, make):
    target = _copy_without(request.getfixturevalue(fixture), tmp_path / "z", name)
    target.symlink_to("/dev/zero")
    exc = finishes(lambda: make(target.parent))
    assert isinstance(exc, OSError) and "device" in str(exc) and name in str(exc)


@pytest.mark.parametrize("fixture,name,make", KINDS, ids=[k[0] for k in KINDS])
def test_file_over_the_cap_is_refused_before_reading(request, tmp_path, fixture, name, make, monkeypatch):
    monkeypatch.setattr(hf_tokenizer, "MAX_TOKENIZER_FILE_BYTES", 4096)
    monkeypatch.setattr(sentencepiece, "MAX_SPIECE_BYTES", 4096)
    monkeypatch.setattr(sentencepiece, "MAX_TOKENIZER_JSON_BYTES", 4096)
    target = _copy_without(request.getfixturevalue(fixture), tmp_path / "big", name)
    with open(target, "wb") as f:  # sparse: 8 GiB declared, nothing written
        f.truncate(8 * 2**30)
    exc = finishes(lambda: make(target.parent))
    assert isinstance(exc, OSError) and "over the limit" in str(exc) and name in str(exc)


@pytest.mark.parametrize("fixture,name,make", KINDS, ids=[k[0] for k in KINDS])
@pytest.mark.parametrize("garbage", [b"\x00" * 64, b"\xff\xfe garbage", b'{"model": {"type": "BPE", "vocab": 3}}'])
def test_garbage_tokenizer_file_is_a_value_error_naming_it(request, tmp_path, fixture, name, make, garbage):
    target = _copy_without(request.getfixturevalue(fixture), tmp_path / "g", name)
    target.write_bytes(garbage)
    with pytest.raises(ValueError, match=name.replace(".", r"\.")):
        make(target.parent)


@pytest.mark.parametrize("fixture,name,make", KINDS, ids=[k[0] for k in KINDS])
def test_odd_texts_give_full_rows_of_valid_ids(request, fixture, name, make):
    tokenizer = make(request.getfixturevalue(fixture))
    ids = tokenizer(ODD_TEXTS)
    assert ids.dtype == torch.long and ids.shape == (len(ODD_TEXTS), CONTEXT)
    assert int(ids.min()) >= 0 and int(ids.max()) < tokenizer.vocab_size
    long_row = ids[ODD_TEXTS.index("a photo of a cat " * 100)]
    assert (long_row[:-1] != tokenizer.pad_token_id).all()  # cut to the context (SigLIP's pad is its end id)
    if hasattr(tokenizer, "eos_token_id") and fixture != "xlmr_dir":
        assert int(long_row[-1]) == tokenizer.eos_token_id  # SigLIP's end token survives the cut
    empty = ids[0]
    assert (empty == tokenizer.pad_token_id).sum() >= CONTEXT - 2  # at most the framing tokens


def test_siglip_loader_names_a_fifo_spiece_model(tmp_path, spiece_dir):
    target = _copy_without(spiece_dir, tmp_path / "l", "spiece.model")
    os.mkfifo(target)
    exc = finishes(lambda: load_siglip_tokenizer(target.parent))
    assert isinstance(exc, OSError) and "FIFO" in str(exc)
