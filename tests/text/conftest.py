"""Fixtures for the tokenizer tests: a seeded, varied caption corpus and open_clip's ids for it.

The corpus covers each input class the CLIP tokenizer (Radford et al. 2021; OpenAI's simple_tokenizer)
treats differently: plain captions, cleaning that ftfy and html.unescape change, non-ASCII scripts,
the regex's corner cases (contractions, digits, symbol runs, case folding), truncation, and the
special-token strings inside text.
"""

from __future__ import annotations

import random

import pytest

WORDS = (
    "a an the photo picture image of on in with and dog cat cats man woman people two three red blue "
    "green small large old young sitting standing running street table car bus train tree field "
    "beach water sky city night close-up view diagram rendering painting"
).split()
ACCENTED = "café naïve crème brûlée Ångström Straße İstanbul façade jalapeño Ærøskøbing São Paulo Łódź über".split()
SCRIPTS = "Ελληνικά Русский العربية עברית हिन्दी ภาษาไทย ქართული Հայերեն".split()
EMOJI = ["🙂", "😂", "👍🏽", "👨‍👩‍👧", "🇫🇷", "❤️", "🐱", "✨", "🤖", "☕"]
ENTITIES = ["&amp;", "&lt;b&gt;", "&#39;", "&quot;", "&nbsp;", "&#x2019;", "&amp;amp;lt;", "&hellip;", "&copy;", "&"]
PUNCT = ["!!!", "???", "...", "--->", "$$$", "(c)", "#tag", "@user", "1,234.56", "3.14", "50%", "http://x.co/a?b=c"]
CONTRACTIONS = ["it's", "I'M", "they'LL", "we've", "don't", "'s", "'self'", "rock'n'roll", "''s", "y'all'd", "'ſ"]
SPACES = [" ", "  ", "\t", "\n", "\r\n", "\x0b", "\x0c", "\x1c", "\x85", "\xa0", "\u2028", "\u3000"]
SPECIALS = ["<start_of_text>", "<END_OF_TEXT>", "<Start_Of_Text>", "<ſtart_of_text>", "!!<end_of_text>"]
MISC = ["“quoted”", "‘single’", "ﬁne ﬂow", "ＬＯＵＤ", "—dash–", "½", "²", "Ⅻ", "٣"]
MISC += ["\x00\x01\x7f", "\x1b[31mred\x1b[0m", "\ufeffbom", "a\u200bb", "\U0001d400\U0001d41a"]


def _caption(rng: random.Random) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(2, 16))]
    if rng.random() < 0.3:
        words[0] = words[0].capitalize()
    return " ".join(words) + rng.choice(["", ".", "!", " ."])


def _mix(rng: random.Random, pools: list, n: int) -> str:
    parts = [rng.choice(rng.choice(pools)) for _ in range(n)]
    return "".join(p + rng.choice(SPACES[:4] + [""]) for p in parts)


def _cjk(rng: random.Random) -> str:
    ranges = [(0x4E00, 0x9FFF), (0x3040, 0x309F), (0x30A0, 0x30FF), (0xAC00, 0xD7A3)]
    lo, hi = rng.choice(ranges)
    return "".join(chr(rng.randint(lo, hi)) for _ in range(rng.randint(1, 30)))


def _combining(rng: random.Random) -> str:
    base = _caption(rng)
    return "".join(c + (chr(rng.randint(0x300, 0x36F)) if c.isalpha() and rng.random() < 0.3 else "") for c in base)


def _mojibake(rng: random.Random) -> str:
    text = " ".join(rng.choice(ACCENTED + ["don’t", "naïve café…", "déjà vu"]) for _ in range(rng.randint(1, 5)))
    return text.encode("utf-8").decode(rng.choice(["latin-1", "cp1252"]), errors="replace")


def _soup(rng: random.Random) -> str:
    """Random code points from the whole range (no surrogates), weighted to the low planes."""
    top = rng.choice([0x80, 0x800, 0x3000, 0x10000, 0x110000])
    chars = []
    for _ in range(rng.randint(1, 40)):
        c = rng.randrange(top)
        chars.append(chr(c) if not 0xD800 <= c < 0xE000 else " ")
    return "".join(chars)


def _ascii_soup(rng: random.Random) -> str:
    return "".join(chr(rng.randrange(128)) for _ in range(rng.randint(1, 60)))


def make_corpus(n: int = 6000, seed: int = 0) -> list[str]:
    """`n` texts drawn from the generators below, deterministically from `seed`."""
    rng = random.Random(seed)
    makers = [
        _caption,
        _caption,
        lambda r: _caption(r).upper(),
        lambda r: _mix(r, [WORDS, ACCENTED, SCRIPTS], r.randint(1, 10)),
        lambda r: _cjk(r) + r.choice(["", " ", " photo ", "。"]) + _cjk(r),
        lambda r: _mix(r, [WORDS, EMOJI], r.randint(1, 10)),
        _combining,
        lambda r: _mix(r, [WORDS, ENTITIES], r.randint(1, 10)),
        lambda r: _mix(r, [WORDS, ENTITIES, ["<b>", "</i>", "<"]], r.randint(1, 8)),
        _mojibake,
        lambda r: _mix(r, [WORDS, PUNCT], r.randint(1, 12)),
        lambda r: _mix(r, [WORDS, CONTRACTIONS], r.randint(1, 10)),
        lambda r: " ".join(_caption(r) for _ in range(r.randint(8, 40))),  # past 77 tokens: truncated
        lambda r: r.choice(["", " ", "\t\n", "\u3000", "\xa0 \xa0", "\r\n\r\n"]),
        lambda r: _mix(r, [WORDS, SPECIALS], r.randint(1, 6)),
        lambda r: _mix(r, [WORDS, MISC, SPACES], r.randint(1, 10)),
        _soup,
        _ascii_soup,
        lambda r: "".join(r.choice("0123456789.,:-/") for _ in range(r.randint(1, 90))),
    ]
    return [rng.choice(makers)(rng) for _ in range(n)]


@pytest.fixture(scope="session")
def corpus() -> list[str]:
    return make_corpus()


@pytest.fixture(scope="session")
def open_clip_ids(corpus: list[str]):
    open_clip = pytest.importorskip("open_clip")
    return open_clip.tokenize(corpus)
