"""The CLIP tokenizer: text -> (N, context_length) token ids, identical to OpenAI's and open_clip's.

Owns the public `CLIPTokenizer` and `tokenize`: input checking, routing each text to the fast or the
exact path, and packing ids into the fixed-length tensor the text tower takes. The ids follow OpenAI's
simple_tokenizer (CLIP, Radford et al. 2021; github.com/openai/CLIP/blob/main/clip/simple_tokenizer.py)
as packaged by open_clip (`open_clip.tokenize`): `<start_of_text>` (49406), BPE ids, `<end_of_text>`
(49407), zero padding; a text too long keeps its first `context_length` tokens (start token included),
the last one replaced by `<end_of_text>`.

Routing (backend "fast"): plain ASCII captions skip ftfy and go through the Rust pre-tokenizer and BPE
in a few long joined strings. Other texts are cleaned exactly as open_clip cleans them; if the result is
plain ASCII it joins the Rust batch, otherwise (non-ASCII, or a special-token string inside the text)
it is pre-tokenized by OpenAI's regex in Python and only its words are merged in Rust. Backend
"reference" is pure Python end to end.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from .cleaning import all_plain, clean_text, is_plain, is_plain_cleaned
from .fast import shared_fast_bpe
from .reference import ReferenceBPE
from .vocab import EOT_TOKEN, SOT_TOKEN, load_vocab

DEFAULT_CONTEXT_LENGTH = 77  # every OpenAI CLIP model's text context
BACKENDS = ("fast", "reference")

# A group of texts tokenized together: (row indices, concatenated ids, per-text id counts), all int64.
_Group = tuple[np.ndarray, np.ndarray, np.ndarray]


@lru_cache(maxsize=1)
def _shared_reference() -> ReferenceBPE:
    return ReferenceBPE()


def _check_context_length(context_length: Any) -> int:
    if isinstance(context_length, bool) or not isinstance(context_length, (int, np.integer)) or context_length < 1:
        raise ValueError(f"context_length must be a positive int, got {context_length!r}")
    return int(context_length)


def as_text_list(texts: Any) -> list[str]:
    """`texts` as a list of str (one str becomes a one-item list); a TypeError naming the first non-str item."""
    if isinstance(texts, str):
        return [texts]
    if isinstance(texts, (bytes, bytearray)) or not isinstance(texts, Iterable):
        raise TypeError(f"texts must be a str or a sequence of str, got {type(texts).__name__}")
    texts = list(texts)
    if not all(isinstance(t, str) for t in texts):
        i, t = next((i, t) for i, t in enumerate(texts) if not isinstance(t, str))
        raise TypeError(f"texts[{i}] is {type(t).__name__}, expected str: {t!r:.80}")
    return texts


def _group(rows: Sequence[int], ids_per_text: list[list[int]]) -> _Group:
    lengths = np.fromiter(map(len, ids_per_text), dtype=np.int64, count=len(ids_per_text))
    ids = np.fromiter((i for ids in ids_per_text for i in ids), dtype=np.int64, count=int(lengths.sum()))
    return np.asarray(rows, dtype=np.int64), ids, lengths


def _pack(out: np.ndarray, group: _Group, sot: int, eot: int) -> None:
    """Write one group's rows of `out` (N, context): [sot, ids[:context - 2], eot, 0, ...]."""
    rows, ids, lengths = group
    context = out.shape[1]
    if context == 1:  # open_clip: tokens[:1] = [sot], then the last token becomes eot
        out[rows, 0] = eot
        return
    starts = np.cumsum(lengths) - lengths
    pos = np.arange(len(ids)) - np.repeat(starts, lengths)  # (sum(lengths),) position within its text
    keep = pos < context - 2
    out[np.repeat(rows, lengths)[keep], 1 + pos[keep]] = ids[keep]
    out[rows, 0] = sot
    out[rows, 1 + np.minimum(lengths, context - 2)] = eot


class CLIPTokenizer:
    """CLIP's BPE tokenizer with OpenAI's ids.

    Args:
        context_length: tokens per row of the output, start and end tokens included (77 for every
            OpenAI model).
        backend: "fast" (Rust `tokenizers` for the BPE, ftfy skipped where it cannot change the text)
            or "reference" (pure Python, OpenAI's algorithm line for line). Both give the same ids.

    Attributes:
        sot_token_id, eot_token_id: ids of `<start_of_text>` (49406) and `<end_of_text>` (49407).
        vocab_size: 49408.
    """

    def __init__(self, context_length: int = DEFAULT_CONTEXT_LENGTH, *, backend: str = "fast") -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.context_length = _check_context_length(context_length)
        self.backend = backend
        vocab = load_vocab()
        self.sot_token_id = vocab.encoder[SOT_TOKEN]
        self.eot_token_id = vocab.encoder[EOT_TOKEN]
        self.vocab_size = len(vocab.encoder)
        self._reference = _shared_reference()
        self._fast = shared_fast_bpe() if backend == "fast" else None

    def __repr__(self) -> str:
        return f"CLIPTokenizer(context_length={self.context_length}, backend={self.backend!r})"

    def __call__(self, texts: str | Iterable[str], context_length: int | None = None) -> torch.LongTensor:
        """Token ids of `texts` as a (N, context_length) int64 tensor (N = 1 for a single str)."""
        texts = as_text_list(texts)
        context = self.context_length if context_length is None else _check_context_length(context_length)
        out = np.zeros((len(texts), context), dtype=np.int64)
        for group in self._encode_groups(texts):
            _pack(out, group, self.sot_token_id, self.eot_token_id)
        return torch.from_numpy(out)

    def encode(self, text: str) -> list[int]:
        """BPE ids of one text, cleaned as open_clip cleans it, without start/end tokens or truncation."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        return np.concatenate([ids for _, ids, _ in self._encode_groups([text])]).tolist()

    def decode(self, ids: Iterable[int] | torch.Tensor | np.ndarray, *, skip_special_tokens: bool = False) -> str:
        """Text of one id sequence, as OpenAI's decode writes it (each word followed by a space).

        Decoding stops at the first end token: what follows it in a row from `__call__` is padding
        (id 0, which is also the vocabulary's "!"), and open_clip's decode users cut it off too, so
        `decode(tokenizer("a cat")[0])` reads "<start_of_text>a cat <end_of_text>", not "...!!!!".
        With `skip_special_tokens`, the start and end tokens are dropped as well.
        """
        if isinstance(ids, (torch.Tensor, np.ndarray)):
            if ids.ndim != 1:
                raise ValueError(f"decode takes one 1-D id sequence, got shape {tuple(ids.shape)}")
            ids = ids.tolist()
        ids = [int(i) for i in ids]
        if self.eot_token_id in ids:
            end = ids.index(self.eot_token_id)
            ids = ids[:end] if skip_special_tokens else ids[: end + 1]
        if skip_special_tokens:
            ids = [i for i in ids if i != self.sot_token_id]
        return self._reference.decode(ids)

    def _encode_groups(self, texts: list[str]) -> list[_Group]:
        if self._fast is None:
            return [_group(range(len(texts)), [self._reference.encode(clean_text(t)) for t in texts])]
        if all_plain(texts):
            ids, lengths = self._fast.encode_plain(texts)
            return [(np.arange(len(texts), dtype=np.int64), ids, lengths)]
        plain_rows, plain, other_rows, other = [], [], [], []
        for i, text in enumerate(texts):
            if is_plain(text):
                plain_rows.append(i)
                plain.append(text)
                continue
            cleaned = clean_text(text)
            if is_plain_cleaned(cleaned):
                plain_rows.append(i)
                plain.append(cleaned)
            else:
                other_rows.append(i)
                other.append(cleaned)
        ids, lengths = self._fast.encode_plain(plain)
        return [
            (np.asarray(plain_rows, dtype=np.int64), ids, lengths),
            _group(other_rows, self._fast.encode_cleaned(other)),
        ]


@lru_cache(maxsize=1)
def _default_tokenizer() -> CLIPTokenizer:
    return CLIPTokenizer()


def tokenize(texts: str | Iterable[str], context_length: int = DEFAULT_CONTEXT_LENGTH) -> torch.LongTensor:
    """`CLIPTokenizer()(texts, context_length)` on a shared instance, like `open_clip.tokenize`."""
    return _default_tokenizer()(texts, context_length=context_length)
