"""Text cleaning before CLIP's BPE, and the test that tells when cleaning can be skipped.

`clean_text` is open_clip's default "lower" cleaning, itself OpenAI's (CLIP, Radford et al. 2021;
github.com/openai/CLIP/blob/main/clip/simple_tokenizer.py `basic_clean` + `whitespace_clean` + lower):
ftfy.fix_text, html.unescape twice, whitespace collapsed, stripped, lowercased.

ftfy costs more than the BPE itself, so the fast path skips it where it provably does nothing:
`is_plain` accepts printable ASCII plus tab/newline/carriage return, without `&`. On such text
ftfy's fixers are all identities (mojibake, C1 controls, ligatures, widths and curly quotes need
non-ASCII; terminal escapes and removed control characters need bytes below 0x20 other than
tab/LF/CR, or 0x7f; ftfy only turns CR into LF, which is whitespace either way; ASCII is NFC);
`html.unescape` needs `&`; and whitespace collapsing does not change how CLIP's regex splits it.
The special-token strings are excluded too, because the fast pre-tokenizer does not give them ids.
"""

from __future__ import annotations

import html
import re

import ftfy

# Outside printable ASCII + \t\n\r, or `&` (0x26). Two searches, not one alternation: each alone is a
# fast scan. The special-token search only sees text `str.isascii` accepted, so IGNORECASE relates ASCII
# letters only (and cleaned text is lowercase already).
_NOT_PLAIN_CHAR_RAW = re.compile(r"[^\t\n\r -%'-~]")
_NOT_PLAIN_CHAR_CLEAN = re.compile(r"[^ -~]")  # cleaned text: single spaces are its only whitespace
_SPECIAL = re.compile(r"<(?:start|end)_of_text>", re.IGNORECASE)


def clean_text(text: str) -> str:
    """open_clip's "lower" cleaning, character for character."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    text = " ".join(text.split()).strip()
    return text.lower()


def is_plain(text: str) -> bool:
    """True where `clean_text` is whitespace collapsing + lowercasing only, and no special string occurs."""
    return text.isascii() and _NOT_PLAIN_CHAR_RAW.search(text) is None and _SPECIAL.search(text) is None


def is_plain_cleaned(cleaned: str) -> bool:
    """True where already-cleaned text is printable ASCII without the special-token strings."""
    return cleaned.isascii() and _NOT_PLAIN_CHAR_CLEAN.search(cleaned) is None and _SPECIAL.search(cleaned) is None


def all_plain(texts: list[str]) -> bool:
    """`is_plain` for a whole batch in two C-level scans (the common case: every caption is plain)."""
    joined = "\n".join(texts)  # a newline cannot complete a special-token string across two texts
    return joined.isascii() and _NOT_PLAIN_CHAR_RAW.search(joined) is None and _SPECIAL.search(joined) is None
