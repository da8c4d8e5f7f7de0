"""Parity of clipforge's CLIP tokenizer with open_clip's (OpenAI's simple_tokenizer, CLIP, Radford et al. 2021).

Ids must be identical, not close: on a seeded corpus of every input class, for both backends, at several
context lengths; and the fast path's pieces must agree with the pure-Python reference they replace.
"""

from __future__ import annotations

import random

import pytest
import torch

from clipforge.text import CLIPTokenizer, tokenize
from clipforge.text.cleaning import clean_text, is_plain, is_plain_cleaned
from clipforge.text.fast import shared_fast_bpe
from clipforge.text.reference import ReferenceBPE
from clipforge.text.vocab import bytes_to_unicode, load_vocab

open_clip = pytest.importorskip("open_clip")


@pytest.fixture(scope="module")
def open_clip_tokenizer():
    return open_clip.tokenizer.SimpleTokenizer()


def _mismatches(ours: torch.Tensor, theirs: torch.Tensor, corpus: list[str]) -> list[str]:
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype == torch.long
    return [corpus[i] for i in (ours != theirs).any(dim=1).nonzero().flatten().tolist()]


def test_corpus_exercises_every_route(corpus: list[str]) -> None:
    assert len(corpus) >= 5000
    plain = [t for t in corpus if is_plain(t)]
    cleaned = [clean_text(t) for t in corpus if not is_plain(t)]
    rust_after_cleaning = [c for c in cleaned if is_plain_cleaned(c)]
    python_regex = [c for c in cleaned if not is_plain_cleaned(c)]
    assert min(len(plain), len(rust_after_cleaning), len(python_regex)) >= 500
    assert sum(len(t) > 1000 for t in corpus) >= 100  # truncated texts
    assert sum(not t.strip() for t in corpus) >= 50  # empty and whitespace-only
    assert sum("_of_text>" in c for c in cleaned) >= 100  # special-token strings inside text


@pytest.mark.parametrize("backend", ["fast", "reference"])
def test_ids_identical_to_open_clip(backend: str, corpus: list[str], open_clip_ids: torch.Tensor) -> None:
    assert _mismatches(CLIPTokenizer(backend=backend)(corpus), open_clip_ids, corpus) == []


def test_tokenize_function_identical(corpus: list[str], open_clip_ids: torch.Tensor) -> None:
    assert _mismatches(tokenize(corpus[:1000]), open_clip_ids[:1000], corpus[:1000]) == []


@pytest.mark.parametrize("context_length", [1, 2, 3, 8, 32, 100])
def test_other_context_lengths(context_length: int, corpus: list[str]) -> None:
    texts = corpus[:600]
    theirs = open_clip.tokenize(texts, context_length=context_length)
    assert _mismatches(tokenize(texts, context_length=context_length), theirs, texts) == []
    assert _mismatches(CLIPTokenizer(context_length=context_length)(texts), theirs, texts) == []


def test_encode_identical(corpus: list[str], open_clip_tokenizer) -> None:
    tok = CLIPTokenizer()
    for text in corpus[:400]:
        assert tok.encode(text) == open_clip_tokenizer.encode(text), text


def test_decode_identical(open_clip_tokenizer) -> None:
    rng = random.Random(0)
    tok = CLIPTokenizer()
    for _ in range(300):
        ids = [rng.randrange(tok.vocab_size) for _ in range(rng.randint(0, 20))]
        assert tok.decode(ids) == open_clip_tokenizer.decode(ids)


def test_rust_bpe_matches_reference_bpe() -> None:
    """The Rust merge loop against OpenAI's, word by word: vocabulary entries, their concatenations, CJK runs."""
    vocab = load_vocab()
    byte_decoder = {c: b for b, c in bytes_to_unicode().items()}
    words = []
    for token in list(vocab.encoder)[:-2]:
        try:
            words.append(bytes(byte_decoder[c] for c in token.removesuffix("</w>")).decode("utf-8"))
        except UnicodeDecodeError:  # a byte piece of a longer character; covered by the joined words
            pass
    rng = random.Random(0)
    sample = rng.sample(words, 3000)
    sample += ["".join(rng.choice(words) for _ in range(3)) for _ in range(2000)]
    sample += ["".join(chr(rng.randint(0x4E00, 0x9FFF)) for _ in range(rng.randint(1, 40))) for _ in range(300)]
    encodings = shared_fast_bpe().words.encode_batch([[w] for w in sample], is_pretokenized=True)
    reference = ReferenceBPE(vocab)
    assert [w for w, e in zip(sample, encodings) if e.ids != reference.encode_words([w])] == []
