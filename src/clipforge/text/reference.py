"""Pure-Python CLIP BPE: the reference path, a port of OpenAI's simple_tokenizer.

Follows github.com/openai/CLIP/blob/main/clip/simple_tokenizer.py (CLIP, Radford et al. 2021) and its
copy in open_clip (`open_clip.tokenizer.SimpleTokenizer`) step for step: the pre-tokenization regex
(special-token strings first, then contractions, letter runs, single digits, other-symbol runs; case
insensitive, which matters for characters such as U+017F that case-fold to ASCII), byte-to-unicode
mapping, and the greedy lowest-rank merge loop. The fast path is verified against it, and it also
supplies the regex the fast path uses for text that is not plain ASCII.
"""

from __future__ import annotations

import regex

from .vocab import END_OF_WORD, SPECIAL_TOKENS, BPEVocab, bytes_to_unicode, load_vocab

# OpenAI's pattern, compiled with the same engine (`regex`) and flags.
PRETOKENIZE_PATTERN = "|".join(SPECIAL_TOKENS) + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
PRETOKENIZE_RE = regex.compile(PRETOKENIZE_PATTERN, regex.IGNORECASE)


def pretokenize(cleaned: str) -> list[str]:
    """Split cleaned text into the words BPE runs on, exactly as OpenAI's tokenizer does."""
    return PRETOKENIZE_RE.findall(cleaned)


class ReferenceBPE:
    """OpenAI's BPE over a `BPEVocab`; `encode` takes cleaned text and returns ids without special tokens."""

    def __init__(self, vocab: BPEVocab | None = None) -> None:
        self.vocab = vocab if vocab is not None else load_vocab()
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        self.bpe_ranks = {m: r for r, m in enumerate(self.vocab.merges)}
        self._cache: dict[str, tuple[str, ...]] = {t: (t,) for t in SPECIAL_TOKENS}

    def bpe(self, token: str) -> tuple[str, ...]:
        """Merge one byte-mapped word into vocabulary symbols (the last carrying `</w>`)."""
        cached = self._cache.get(token)
        if cached is not None:
            return cached
        word = tuple(token[:-1]) + (token[-1] + END_OF_WORD,)
        ranks = self.bpe_ranks
        while len(word) > 1:
            pairs = set(zip(word[:-1], word[1:]))
            bigram = min(pairs, key=lambda pair: ranks.get(pair, float("inf")))
            if bigram not in ranks:
                break
            first, second = bigram
            merged: list[str] = []
            i = 0
            while i < len(word):
                try:
                    j = word.index(first, i)
                except ValueError:
                    merged.extend(word[i:])
                    break
                merged.extend(word[i:j])
                i = j
                if i < len(word) - 1 and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(first)
                    i += 1
            word = tuple(merged)
        self._cache[token] = word
        return word

    def encode_words(self, words: list[str]) -> list[int]:
        """BPE ids of already pre-tokenized words."""
        encoder = self.vocab.encoder
        ids: list[int] = []
        for w in words:
            mapped = "".join(self.byte_encoder[b] for b in w.encode("utf-8"))
            ids.extend(encoder[s] for s in self.bpe(mapped))
        return ids

    def encode(self, cleaned: str) -> list[int]:
        """BPE ids of cleaned text (see `cleaning.clean_text`), without start/end tokens."""
        return self.encode_words(pretokenize(cleaned))

    def decode(self, ids: list[int]) -> str:
        """OpenAI's decode: concatenate symbols, bytes back to UTF-8 (invalid -> U+FFFD), `</w>` -> space."""
        decoder = self.vocab.decoder
        try:
            text = "".join(decoder[i] for i in ids)
        except KeyError as e:
            raise ValueError(f"token id {e.args[0]} is outside the vocabulary (0..{len(decoder) - 1})") from None
        data = bytearray(self.byte_decoder[c] for c in text)
        return data.decode("utf-8", errors="replace").replace(END_OF_WORD, " ")
