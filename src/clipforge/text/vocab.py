"""CLIP's byte-level BPE vocabulary: the byte-to-unicode table, the merges and the token -> id map.

Owns reading `bpe_simple_vocab_16e6.txt.gz` (the file OpenAI ships with CLIP, Radford et al. 2021,
"Learning Transferable Visual Models From Natural Language Supervision") and laying out the 49,408 ids
exactly as OpenAI's `simple_tokenizer.py` (github.com/openai/CLIP/blob/main/clip/simple_tokenizer.py)
does: 256 byte symbols, the same 256 with the `</w>` end-of-word suffix, 48,894 merges, then
`<start_of_text>` (49406) and `<end_of_text>` (49407).
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
END_OF_WORD = "</w>"
SOT_TOKEN = "<start_of_text>"
EOT_TOKEN = "<end_of_text>"
SPECIAL_TOKENS = (SOT_TOKEN, EOT_TOKEN)
NUM_MERGES = 49152 - 256 - 2  # OpenAI keeps the first 48,894 merges of the file


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """Map each of the 256 byte values to a printable unicode character (GPT-2's reversible table).

    Printable Latin-1 bytes map to themselves, the rest to code points from 256 on, so BPE never
    sees whitespace or control characters inside a word.
    """
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


@dataclass(frozen=True)
class BPEVocab:
    """The loaded vocabulary.

    Attributes:
        merges: the merge rules in priority order (index = rank), each a pair of symbols.
        encoder: token string -> id, laid out as OpenAI's tokenizer does (49,408 entries).
        decoder: id -> token string, the inverse of `encoder`.
    """

    merges: tuple[tuple[str, str], ...]
    encoder: dict[str, int]
    decoder: dict[int, str]


@lru_cache(maxsize=1)
def load_vocab() -> BPEVocab:
    """Read the packaged merges file (once per process) and build the id layout."""
    raw = resources.files("clipforge.text").joinpath(VOCAB_FILE).read_bytes()
    lines = gzip.decompress(raw).decode("utf-8").split("\n")
    merges = tuple(tuple(line.split()) for line in lines[1 : NUM_MERGES + 1])  # line 0 is a version header
    for rank, merge in enumerate(merges):
        if len(merge) != 2:
            raise ValueError(f"{VOCAB_FILE}: merge {rank} is malformed: {merge!r}")
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + END_OF_WORD for s in symbols] + ["".join(m) for m in merges] + list(SPECIAL_TOKENS)
    encoder = {t: i for i, t in enumerate(tokens)}
    if len(encoder) != len(tokens):
        raise ValueError(f"{VOCAB_FILE}: duplicate tokens; expected {len(tokens)} distinct, got {len(encoder)}")
    return BPEVocab(merges=merges, encoder=encoder, decoder=dict(enumerate(tokens)))
