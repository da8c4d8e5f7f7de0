"""Search queries: rclip's query syntax parsed into terms, and the terms combined into one query embedding.

A query is terms joined by `+` and `-`, each optionally weighted (rclip's syntax, github.com/yurijmikhalevich/rclip):

    "2:golden retriever + ./pool.jpg - fruit"      text, an image file, arithmetic and a weight
    "https://example.org/cat.png"                   an image URL
    "id:123 - 0.5:snow"                             row 123 of the index ("more like this"), minus some text
    "emb:query.npy"  /  "emb:rows.npy#3"            an embedding saved with numpy (one row, or row 3 of many)

The rules, as rclip has them (`rclip/model.py`, `rclip/utils/helpers.py`):
- an operator is a `+` or `-` standing alone between spaces (`t-shirt` and `black-and-white` stay text); rclip
  takes them as separate command-line words (`rclip "2:golden retriever" + "./pool.jpg"`); `parse_query` accepts
  both that list of words and one string; in a string, double quotes keep a term's `+`/`-` in it (`"rock + roll"`);
- a weight is `WEIGHT:` before a term, a non-negative decimal number (`2:cat`, `0.5:./cat.jpg`, `.5:cat`), 1 without;
- a term is an image URL when it starts with http:// or https://, an image file when it starts with `/`, `./`,
  `file://` or a Windows drive (`C:\\`) — a relative path must start with `./` so that text is never taken for a
  file — and text otherwise. clipforge adds `../` and `~/` paths, `id:N` and `emb:PATH.npy[#ROW]`.

The combined embedding: every term's embedding is L2-normalised, multiplied by its weight and sign, and summed
(rclip: per-term normalised text and image features, weighted sums, positives minus negatives). clipforge then
L2-normalises the sum, which rclip does not: a positive scale changes no ranking, and a unit query makes scores
cosines, comparable across queries and with the 0.94 duplicate threshold. A sum of (almost) zero (`cat - cat`) is
an error here; rclip would silently score every image 0.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

TermKind = Literal["text", "image", "url", "id", "embedding"]

MAX_QUERY_CHARS = 10_000  # a query is typed by a person or a page: anything longer is a mistake or an attack
MAX_TERMS = 64
MAX_EMBEDDING_FILE_BYTES = 64 * 2**20  # emb: files: one (or a few thousand) rows of a few thousand floats
MAX_URL_BYTES = 32 * 2**20  # an image fetched for a query (rclip: 50 MB)
URL_TIMEOUT_S = 20.0
CANCEL_EPS = 1e-6  # |sum| below this (of a sum of unit vectors) means the terms cancel out

_WEIGHT = re.compile(r"^(?P<weight>\d+(?:\.\d*)?|\.\d+):(?P<rest>.+)$", re.DOTALL)  # rclip's multiplier regex
# Something that starts like a weight but is not one (`-2:cat`, `1e3:cat`, `2..5:cat`): refused, never read as text.
_BAD_WEIGHT = re.compile(
    r"^(?P<weight>[-+][\d.]+(?:[eE][-+]?\d+)?|\d*\.\d*\.[\d.]*|[\d.]+[eE][-+]?\d+|\.):(?P<rest>.+)$", re.DOTALL
)
_WINDOWS_PATH = re.compile(r"^[a-zA-Z]:[\\/]")
_ID = re.compile(r"^id:(?P<id>.*)$", re.DOTALL)
_EMB = re.compile(r"^emb:(?P<path>.*?)(?:#(?P<row>[^#]*))?$", re.DOTALL)


_MAX_ROW_DIGITS = 18  # every int64 row number fits; a longer one (or Python's 4300-digit int() limit) never names a row


def _row_number(digits: str, word: str) -> int:
    """A row number from its digits; QueryError for one with more digits than any index's row (an int64)."""
    if len(digits) > _MAX_ROW_DIGITS:
        shown = word if len(word) <= 40 else word[:37] + "..."
        raise QueryError(f"term {shown!r}: a row number of {len(digits)} digits is beyond any index's rows")
    return int(digits)


class QueryError(ValueError):
    """A query that cannot be parsed or embedded: the message quotes the term and says what to write instead."""


@dataclass(frozen=True)
class Term:
    """One term of a query: what it is, its value, its weight (>= 0) and its sign (+1 added, -1 subtracted).

    `value` is the text, the image path or URL, the row id (int) or the .npy path; `row` is the row of an
    `emb:` file (None: the file holds one vector).
    """

    kind: TermKind
    value: str | int
    weight: float = 1.0
    sign: int = 1
    row: int | None = None

    @property
    def coefficient(self) -> float:
        """weight * sign: what this term's normalised embedding is multiplied by in the sum."""
        return self.weight * self.sign

    def describe(self) -> str:
        """The term as a user wrote it (for messages): `2:cat`, `id:5`, `emb:q.npy#3`."""
        value = f"id:{self.value}" if self.kind == "id" else f"emb:{self.value}" if self.kind == "embedding" else ""
        value = value or str(self.value)
        if self.row is not None:
            value += f"#{self.row}"
        return value if self.weight == 1.0 else f"{self.weight:g}:{value}"


def _split_string(text: str) -> list[str]:
    """Words of a query string: operators (`+`, `-` between spaces) and terms; double quotes protect a term."""
    words, current, quoted, i = [], [], False, 0
    while i < len(text):
        char = text[i]
        if char == '"':
            quoted = not quoted
            current.append(char)
        elif not quoted and char in "+-" and (i == 0 or text[i - 1].isspace()):
            after = text[i + 1] if i + 1 < len(text) else " "
            if after.isspace():
                words.extend([w for w in ["".join(current).strip()] if w] + [char])
                current = []
            else:
                current.append(char)
        else:
            current.append(char)
        i += 1
    if quoted:
        raise QueryError(f"query {text!r} has an unclosed double quote; close it or remove it")
    tail = "".join(current).strip()
    return words + ([tail] if tail else [])


def _unquote(word: str) -> str:
    word = word.strip()
    return word[1:-1] if len(word) >= 2 and word[0] == word[-1] == '"' else word


def parse_term(word: str, sign: int = 1) -> Term:
    """One term (`2:cat`, `./a.jpg`, `http://...`, `id:7`, `emb:q.npy#2`) with its sign; QueryError if malformed."""
    word = _unquote(word)
    weight = 1.0
    match = _WEIGHT.match(word)
    if match:
        weight, word = float(match.group("weight")), _unquote(match.group("rest"))
    else:
        bad = _BAD_WEIGHT.match(word)
        if bad:
            raise QueryError(
                f"term {word!r}: weight {bad.group('weight')!r} is not a non-negative decimal number; write "
                "WEIGHT:TERM such as 2:cat or 0.5:./cat.jpg, and subtract with ' - ' between terms"
            )
    if not word.strip():
        raise QueryError(f"term {word!r} is empty after its weight; write WEIGHT:TERM such as 2:cat")
    if not math.isfinite(weight):
        raise QueryError(f"term {word!r}: weight {weight} is not finite")
    if match_id := _ID.match(word):
        raw = match_id.group("id").strip()
        if not re.fullmatch(r"[0-9]+", raw):
            raise QueryError(f"term {word!r}: id:N takes a row number of the index (e.g. id:123), got {raw!r}")
        return Term("id", _row_number(raw, word), weight, sign)
    if match_emb := _EMB.match(word):
        path, row = match_emb.group("path").strip(), match_emb.group("row")
        if not path:
            raise QueryError(f"term {word!r}: emb: takes a .npy file, e.g. emb:query.npy or emb:rows.npy#3")
        if row is not None and not re.fullmatch(r"[0-9]+", row.strip()):
            raise QueryError(f"term {word!r}: the row after # must be a row number (e.g. emb:rows.npy#3), got {row!r}")
        return Term("embedding", path, weight, sign, None if row is None else _row_number(row.strip(), word))
    if word.startswith(("http://", "https://")):
        return Term("url", word, weight, sign)
    if word.startswith(("/", "./", "../", "~/", "file://")) or _WINDOWS_PATH.match(word):
        return Term("image", word.removeprefix("file://"), weight, sign)
    return Term("text", word, weight, sign)


def parse_query(query: str | Sequence[str]) -> list[Term]:
    """Terms of a query in rclip's syntax (see the module docstring): a string, or a list of words as rclip's
    command line takes them (`["2:cat", "+", "./img.jpg", "-", "fruit"]`, no splitting inside a word).

    Raises QueryError for an empty query, a leading `-`, two operators in a row or a trailing one, a weight
    that is not a number, a malformed id:/emb: term, or more than MAX_TERMS terms.
    """
    if isinstance(query, str):
        if len(query) > MAX_QUERY_CHARS:
            raise QueryError(f"query of {len(query):,} characters, over the limit of {MAX_QUERY_CHARS:,}")
        words = _split_string(query)
    else:
        words = [str(word) for word in query]
        if sum(map(len, words)) > MAX_QUERY_CHARS:
            raise QueryError(f"query over the limit of {MAX_QUERY_CHARS:,} characters")
    pending: str | None = None  # the operator since the last term
    current: list[str] = []  # words of the term being read (a list of words joins them: rclip's shell words)
    signed: list[tuple[int, str]] = []
    for word in words:
        if word in ("+", "-"):
            if current:
                signed.append((-1 if pending == "-" else 1, " ".join(current)))
                current, pending = [], None
            elif pending is not None:
                raise QueryError(f"two operators in a row ({pending!r}, {word!r}); write TERM + TERM or TERM - TERM")
            if not signed and word == "-":
                raise QueryError("a query cannot start with '-': give a term to subtract from, e.g. 'apple - fruit'")
            pending = word
        elif word.strip():
            current.append(word.strip())
    if current:
        signed.append((-1 if pending == "-" else 1, " ".join(current)))
    elif pending is not None and signed:
        raise QueryError(f"query ends with {pending!r}; give a term after it")
    if not signed:
        raise QueryError("empty query; give text, an image path (./img.jpg), a URL, id:N or emb:file.npy")
    terms = [parse_term(word, sign) for sign, word in signed]
    if len(terms) > MAX_TERMS:
        raise QueryError(f"query of {len(terms)} terms, over the limit of {MAX_TERMS}")
    return terms


# ------------------------------------------------------------------------------------------ embedding


class QueryEncoder(Protocol):
    """What combining terms needs from a model: (n, D) float embeddings of texts and of decoded images."""

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        """(n, D) embeddings of `texts` (normalised or not: combining normalises each)."""
        ...

    def encode_images(self, images: list) -> np.ndarray:
        """(n, D) embeddings of decoded RGB PIL images."""
        ...


def fetch_url(url: str, *, timeout: float = URL_TIMEOUT_S, max_bytes: int = MAX_URL_BYTES) -> bytes:
    """The bytes at an http(s) URL, at most `max_bytes` (refused above, before or while reading).

    Every failure (no network, DNS, refused connection, HTTP error, timeout) is one QueryError naming the URL and
    the reason, with what to do: a search machine is often offline, and a traceback from urllib helps nobody.
    """
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, headers={"User-Agent": "clipforge-search"})
    hint = "check the address and the network, or download the image and give its path (./image.jpg)"
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - http(s) only, checked
            length = response.headers.get("Content-Length")
            if length and length.isdigit() and int(length) > max_bytes:
                raise QueryError(f"{url}: {int(length):,} bytes, over the limit of {max_bytes:,} for a query image")
            data = response.read(max_bytes + 1)
    except urllib.error.HTTPError as exc:
        raise QueryError(f"could not fetch {url}: HTTP {exc.code} {exc.reason}; {hint}") from exc
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise QueryError(f"could not fetch {url}: {reason} (no network?); {hint}") from exc
    if len(data) > max_bytes:
        raise QueryError(f"{url}: more than {max_bytes:,} bytes, over the limit for a query image")
    return data


def load_embedding_term(term: Term, dim: int | None = None) -> np.ndarray:
    """The (D,) vector of an `emb:` term: a .npy of shape (D,), (1, D), or (N, D) with `#ROW`; never unpickled."""
    from ..safeio import read_regular_file

    path = Path(str(term.value)).expanduser()
    data = read_regular_file(path, MAX_EMBEDDING_FILE_BYTES, what="embedding file")
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise QueryError(f"{path}: not a numpy .npy array ({exc}); save one with numpy.save") from exc
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "fiu":
        raise QueryError(f"{path}: expected a numeric array, found {getattr(array, 'dtype', type(array))}")
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2:
        raise QueryError(f"{path}: expected shape (D,) or (N, D), found {array.shape}")
    if term.row is None:
        if array.shape[0] != 1:
            raise QueryError(f"{path} holds {array.shape[0]} rows; pick one with emb:{path}#ROW (0-based)")
        vector = array[0]
    else:
        if term.row >= array.shape[0]:
            raise QueryError(f"{path}#{term.row}: the file holds rows 0..{array.shape[0] - 1}")
        vector = array[term.row]
    if dim is not None and vector.shape[0] != dim:
        raise QueryError(f"{path}: vectors of {vector.shape[0]} dimensions, the index holds {dim}-d embeddings")
    return vector.astype(np.float32)


def _load_query_image(term: Term, max_pixels: int | None):
    from ..image import load_image

    if term.kind == "url":
        return load_image(fetch_url(str(term.value)), name=str(term.value), max_pixels=max_pixels)
    path = Path(str(term.value)).expanduser()
    if not path.exists():
        raise QueryError(f"image {term.value}: no such file; check the path (relative paths start with ./)")
    return load_image(path, max_pixels=max_pixels)


def _unit(vector: np.ndarray, what: str) -> np.ndarray:
    vector = np.asarray(vector, dtype=np.float64)
    norm = float(np.linalg.norm(vector))
    if not math.isfinite(norm) or norm == 0.0:
        raise QueryError(f"{what}: its embedding is zero or not finite, so it has no direction to search")
    return vector / norm


def embed_terms(
    terms: Sequence[Term],
    encoder: QueryEncoder | Callable[[], QueryEncoder] | None,
    rows: Callable[[np.ndarray], np.ndarray] | None = None,
    *,
    dim: int | None = None,
    max_pixels: int | None = 50_000_000,
) -> np.ndarray:
    """One L2-normalised (D,) float32 query vector: sum(weight * sign * normalize(embedding)), normalised.

    `encoder` embeds text and image terms (a callable returning one is called only when such a term exists: the
    model loads lazily); `rows(ids (n,) int64) -> (n, D)` gives `id:` terms their stored embeddings. Texts and
    images are each encoded in one batch. QueryError when a term cannot be embedded (missing file, URL offline,
    unknown id, wrong dimension) or when the terms cancel out.
    """
    if not terms:
        raise QueryError("empty query; give at least one term")
    vectors: list[np.ndarray | None] = [None] * len(terms)
    texts = [i for i, t in enumerate(terms) if t.kind == "text"]
    images = [i for i, t in enumerate(terms) if t.kind in ("image", "url")]
    if texts or images:
        if encoder is None:
            raise QueryError("text and image terms need a model; this search has none (use id: or emb: terms)")
        if not hasattr(encoder, "encode_texts"):
            encoder = encoder()
        if texts:
            out = np.asarray(encoder.encode_texts([str(terms[i].value) for i in texts]), dtype=np.float32)
            for i, vector in zip(texts, out):
                vectors[i] = vector
        if images:
            decoded = [_load_query_image(terms[i], max_pixels) for i in images]
            out = np.asarray(encoder.encode_images(decoded), dtype=np.float32)
            for i, vector in zip(images, out):
                vectors[i] = vector
    ids = [i for i, t in enumerate(terms) if t.kind == "id"]
    if ids:
        if rows is None:
            raise QueryError("id: terms need an index to look rows up in")
        out = np.asarray(rows(np.array([terms[i].value for i in ids], dtype=np.int64)), dtype=np.float32)
        for i, vector in zip(ids, out):
            vectors[i] = vector
    for i, term in enumerate(terms):
        if term.kind == "embedding":
            vectors[i] = load_embedding_term(term, dim)
    width = {v.shape[0] for v in vectors if v is not None}
    if len(width) != 1 or (dim is not None and width != {dim}):
        raise QueryError(f"the query's terms have embeddings of {sorted(width)} dimensions; the index holds {dim}")
    total = np.zeros(width.pop(), dtype=np.float64)  # (D,)
    for term, vector in zip(terms, vectors):
        total += term.coefficient * _unit(vector, f"term {term.describe()!r}")
    norm = float(np.linalg.norm(total))
    if norm < CANCEL_EPS:
        described = " ".join(("+" if t.sign > 0 else "-") + " " + t.describe() for t in terms)
        raise QueryError(f"the query's terms cancel out ({described.lstrip('+ ')}); change the terms or their weights")
    return (total / norm).astype(np.float32)
