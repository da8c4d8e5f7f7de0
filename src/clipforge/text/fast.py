"""Batch CLIP BPE on the Rust `tokenizers` library, giving the same ids as OpenAI's simple_tokenizer.

Two `tokenizers.Tokenizer`s share CLIP's vocabulary and merges (CLIP, Radford et al. 2021;
github.com/openai/CLIP/blob/main/clip/simple_tokenizer.py), both a BPE model with the `</w>`
end-of-word suffix:

- `plain`: for printable-ASCII text. Its pre-tokenizer is OpenAI's regex (without the special-token
  alternatives) as a `Split` that keeps the matches. No byte-level step: GPT-2's byte table maps every
  printable ASCII byte to itself, and the regex never puts whitespace inside a word. A batch is joined
  into a few long strings with a separator (`\\x01`, an added token with its own id, which plain text
  never contains), so the Rust side runs in parallel and Python handles no per-text objects.
- `words`: for everything else. Python pre-tokenizes with the reference regex (same engine, same flags
  as OpenAI), and this tokenizer maps each word's bytes (`ByteLevel`) and merges it. The special-token
  strings are added tokens, so a word that is exactly `<start_of_text>` gets id 49406 as in OpenAI's.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from tokenizers import AddedToken, Regex, Tokenizer, models, pre_tokenizers

from .reference import pretokenize
from .vocab import END_OF_WORD, SPECIAL_TOKENS, BPEVocab, load_vocab

SEPARATOR = "\x01"
_PLAIN_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
_TEXTS_PER_CHUNK = 256  # small enough to spread a batch over the cores, big enough to amortise the calls
_BPE_CACHE_WORDS = 1 << 17


def _bpe_model(vocab: BPEVocab) -> models.BPE:
    return models.BPE(
        vocab=vocab.encoder,
        merges=list(vocab.merges),
        end_of_word_suffix=END_OF_WORD,
        continuing_subword_prefix="",
        fuse_unk=False,
        cache_capacity=_BPE_CACHE_WORDS,
    )


class FastBPE:
    """CLIP BPE on `tokenizers`; inputs are cleaned (or plain) text, outputs ids without start/end tokens."""

    def __init__(self, vocab: BPEVocab | None = None) -> None:
        vocab = vocab if vocab is not None else load_vocab()
        self.plain = Tokenizer(_bpe_model(vocab))
        self.plain.pre_tokenizer = pre_tokenizers.Split(Regex(_PLAIN_PATTERN), behavior="removed", invert=True)
        self.plain.add_special_tokens([AddedToken(SEPARATOR, special=True, normalized=False)])
        self.separator_id = self.plain.token_to_id(SEPARATOR)
        if self.separator_id in vocab.decoder:
            raise RuntimeError("the separator token collided with a vocabulary id")

        self.words = Tokenizer(_bpe_model(vocab))
        self.words.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        self.words.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
        # `encode_batch_fast` (recent tokenizers) skips computing the offsets, which nothing here reads
        self._plain_batch = getattr(self.plain, "encode_batch_fast", self.plain.encode_batch)
        self._words_batch = getattr(self.words, "encode_batch_fast", self.words.encode_batch)

    def encode_plain(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Ids of plain texts (see `cleaning.is_plain`), lowercased here.

        Returns (ids, lengths): all texts' ids concatenated (int64, (sum(lengths),)) and each text's
        count (int64, (len(texts),)).
        """
        if not texts:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        chunks = [
            SEPARATOR.join(texts[i : i + _TEXTS_PER_CHUNK]).lower() + SEPARATOR
            for i in range(0, len(texts), _TEXTS_PER_CHUNK)
        ]
        encodings = self._plain_batch(chunks, add_special_tokens=False)
        ids = np.concatenate([np.asarray(e.ids, dtype=np.int64) for e in encodings])
        ends = np.flatnonzero(ids == self.separator_id)  # one per text, each text's ids end before it
        if len(ends) != len(texts):
            raise RuntimeError(f"expected {len(texts)} separators, found {len(ends)}")
        lengths = np.diff(ends, prepend=-1) - 1
        return ids[ids != self.separator_id], lengths

    def encode_cleaned(self, cleaned: list[str]) -> list[list[int]]:
        """Ids of cleaned texts of any kind: pre-tokenized by the reference regex, merged in Rust."""
        out: list[list[int]] = [[] for _ in cleaned]
        todo = [(i, words) for i, words in enumerate(map(pretokenize, cleaned)) if words]
        if todo:
            words = [w for _, w in todo]
            encodings = self._words_batch(words, is_pretokenized=True, add_special_tokens=False)
            for (i, _), enc in zip(todo, encodings):
                out[i] = enc.ids
        return out


@lru_cache(maxsize=1)
def shared_fast_bpe() -> FastBPE:
    """One `FastBPE` per process (building it reads the vocabulary and compiles two BPE models)."""
    return FastBPE()
