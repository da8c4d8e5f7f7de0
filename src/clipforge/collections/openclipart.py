"""The OpenClipart drawings of Debian's `openclipart-svg`: ~8,100 SVGs with titles, keywords and categories.

Files live under ROOT/<category>/[<subcategory>/...]NAME.svg; each carries Dublin Core metadata in <metadata>:
the work's <dc:title>, <dc:description>, keyword <rdf:li> elements and <dc:creator>. Only the <metadata> element
is parsed (the drawing itself is not read), with defusedxml: no external entities or DTDs are fetched.

Titles are noisy, like web alt-text: many name the set a drawing came from rather than the drawing ("Part of the
Flat Icon Collection (Wed Aug 25 23:29:46 2004)", "Lemon SVG theme", "gramastar" on 1,375 stars), some are the
author's name or a file stem ("Clipart by Nicu Buculei - arrow08_4"), some are empty or in Italian. `clean_title`
turns a title into a caption with the rules below, each counted (`Catalog.rule_counts`), in this order:

- "empty": no title: the caption is the file name made readable (see below);
- "boilerplate": a title that describes no drawing (BOILERPLATE_PATTERNS: the Flat Icon Collection stamp, the
  gradient collection's credit, "Various Cliparts", ...): the caption is the file name made readable;
- "author_title": the title is the creator's name: the caption is the file name made readable;
- "author_prefix": "Clipart by NAME - rest" keeps "rest" (made readable when it looks like a file stem);
- "shared_title": a title carried by at least SHARED_TITLE_MIN files (the name of a set: "Lemon SVG theme",
  "AIGA_Symbol_Signs", "card") becomes "<file name made readable> (<title>)", so each drawing gets its own words
  while the set's name is kept;
- "underscores": "Switch_HP_2524" -> "Switch HP 2524";
- "kept": the title as it is (whitespace collapsed).

A file name is made readable by dropping a trailing index ("_01", "3", "_05a"), the creator's name where the
file name contains it ("lightbulb_jon_phillips_01" by Jon Phillips -> "lightbulb"), and replacing "_" and "-"
with spaces. If nothing is left, the keywords are used instead ("keywords" fallback, joined by ", "). Keywords
are kept separately (a metadata column), never mixed into a kept title. Titles in other languages are kept as
they are: nothing here can translate them.
"""

from __future__ import annotations

import io
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO

from clipforge.safeio import open_regular_file

from .render import RenderJob

OPENCLIPART_ROOT = "/usr/share/openclipart/svg"
OPENCLIPART_INSTALL = "apt-get install -y openclipart-svg"
OPENCLIPART_LAYOUT = "ROOT/CATEGORY/[SUBCATEGORY/]NAME.svg with Dublin Core <metadata> (Debian openclipart-svg)"
SHARED_TITLE_MIN = 10
MAX_METADATA_BYTES = 32 * 2**20  # the parser stops at </metadata>; this caps what a file may hold before it

BOILERPLATE_PATTERNS: tuple[re.Pattern[str], ...] = tuple(
    re.compile(p, re.IGNORECASE)
    for p in (
        r"^part of the flat icon collection\b",
        r"^svg gradient collection\b",
        r"^various cliparts?$",
        r"^(untitled|no title|title|image|drawing|clipart|svg)\d*$",
        r"^r16 s[iu]bmission$",
        r"^(new )?document( \d+)?$",
    )
)
_AUTHOR_PREFIX = re.compile(r"^clip\s*art by [^-]+ - (?P<rest>.+)$", re.IGNORECASE)
_TRAILING_INDEX = re.compile(r"[_\-\s]*\d+[a-z]?$")
_STEM_LIKE = re.compile(r"^[a-z0-9_\-]+$")
_SPACES = re.compile(r"\s+")

_DC = "{http://purl.org/dc/elements/1.1/}"
_CC = "{http://web.resource.org/cc/}"
_RDF = "{http://www.w3.org/1999/02/22-rdf-syntax-ns#}"
_SVG_METADATA = "{http://www.w3.org/2000/svg}metadata"


@dataclass(frozen=True)
class ClipartMetadata:
    """What an SVG's <metadata> says about the drawing (empty strings / tuple when absent)."""

    title: str = ""
    description: str = ""
    keywords: tuple[str, ...] = ()
    creator: str = ""


@dataclass(frozen=True)
class ClipartItem:
    """One drawing: its file, category, metadata, the caption made from its title and the rule that made it."""

    path: str
    category: str
    subcategory: str
    metadata: ClipartMetadata
    caption: str
    rule: str

    def job(self, size: int) -> RenderJob:
        """The render job of this drawing at `size` pixels."""
        return RenderJob("svg", self.path, size)


@dataclass(frozen=True)
class ClipartCatalog:
    """Every drawing under a root, sorted by path, with the count of each title-cleaning rule.

    Fields:
        root: the folder that was listed.
        items: the drawings.
        rule_counts: rule name -> drawings whose caption it made (see the module docstring).
        unreadable_metadata: (path, reason) of files whose metadata could not be parsed; they are still listed,
            captioned from their file names (the renderer decides whether the drawing itself is usable).
    """

    root: str
    items: tuple[ClipartItem, ...]
    rule_counts: dict[str, int] = field(default_factory=dict)
    unreadable_metadata: tuple[tuple[str, str], ...] = ()

    def categories(self) -> list[str]:
        """The top-level categories, sorted."""
        return sorted({item.category for item in self.items})


def _text(element: object | None) -> str:
    text = getattr(element, "text", None) or ""
    return _SPACES.sub(" ", text).strip()


def read_metadata(path: str) -> ClipartMetadata:
    """The Dublin Core metadata of one SVG; reads up to </metadata> only. OSError or a parse error when unusable.

    No entity is ever expanded by the XML parser and nothing outside the file is read: the DOCTYPE's internal
    subset (where Adobe Illustrator exports declare entities such as `<!ENTITY ns_svg "http://...">`) is removed
    before parsing (see `without_internal_subset`), and defusedxml then refuses any entity declaration left and any
    external entity or DTD. A billion-laughs or XXE file therefore yields no metadata (an error) instead of
    expanding or reading anything.
    """
    from defusedxml.ElementTree import iterparse

    with open_regular_file(path, what="SVG file") as file:
        if os.fstat(file.fileno()).st_size > MAX_METADATA_BYTES:
            raise OSError(f"{path}: larger than {MAX_METADATA_BYTES // 2**20} MiB")
        stream = without_internal_subset(file)
        for _, element in iterparse(stream, events=("end",), forbid_entities=True, forbid_external=True):
            if element.tag == f"{_CC}Work":
                keywords = tuple(t for t in (_text(li) for li in element.iter(f"{_RDF}li")) if t)
                creator = element.find(f"{_DC}creator")
                return ClipartMetadata(
                    title=_text(element.find(f"{_DC}title")),
                    description=_text(element.find(f"{_DC}description")),
                    keywords=tuple(dict.fromkeys(keywords)),  # de-duplicated, order kept
                    creator=_text(creator.find(f".//{_DC}title")) if creator is not None else "",
                )
            if element.tag == _SVG_METADATA:
                break
    return ClipartMetadata()


_PLAIN_ENTITY = re.compile(rb"""<!ENTITY\s+([A-Za-z_][\w.\-]*)\s+(?:"([^"&%<]{0,256})"|'([^'&%<]{0,256})')\s*>""")
_PROLOG_BYTES = 2**20  # where a DOCTYPE and the root start tag must end; more is refused, not searched
_MAX_REFERENCES = 64  # entity references replaced in the root start tag (namespace URIs: Illustrator uses ~11)


def _skip_quoted(data: bytes, i: int) -> int:
    end = data.find(data[i : i + 1], i + 1)
    if end < 0:
        raise ValueError("unterminated quoted string in the DOCTYPE")
    return end + 1


def _internal_subset(data: bytes) -> tuple[int, int] | None:
    """(start, end) of the DOCTYPE's `[...]` in `data`, None without one; ValueError when it does not end."""
    start = data.find(b"<!DOCTYPE")
    if start < 0:
        return None
    i = start + len(b"<!DOCTYPE")
    while i < len(data):  # the name and external id, up to "[" or ">"
        char = data[i : i + 1]
        if char in (b'"', b"'"):
            i = _skip_quoted(data, i)
        elif char == b">":
            return None
        elif char == b"[":
            break
        else:
            i += 1
    else:
        raise ValueError("the DOCTYPE does not end")
    opening = i
    i += 1
    while i < len(data):  # the subset: declarations, comments, quoted values (which may hold "]")
        char = data[i : i + 1]
        if char in (b'"', b"'"):
            i = _skip_quoted(data, i)
        elif data.startswith(b"<!--", i):
            end = data.find(b"-->", i + 4)
            if end < 0:
                raise ValueError("unterminated comment in the DOCTYPE")
            i = end + 3
        elif char == b"]":
            return opening, i + 1
        else:
            i += 1
    raise ValueError("the DOCTYPE's internal subset does not end")


def _root_start_tag_end(data: bytes, i: int) -> int:
    """The index just past the first element's start tag at or after `i` (-1 when not in `data`)."""
    while True:
        i = data.find(b"<", i)
        if i < 0:
            return -1
        if data.startswith(b"<!--", i):
            end = data.find(b"-->", i)
            i = -1 if end < 0 else end + 3
        elif data.startswith(b"<?", i) or data.startswith(b"<!", i):
            end = data.find(b">", i)
            i = -1 if end < 0 else end + 1
        else:
            break
        if i < 0:
            return -1
    i += 1
    while i < len(data):
        char = data[i : i + 1]
        if char in (b'"', b"'"):
            end = data.find(char, i + 1)
            if end < 0:
                return -1
            i = end + 1
        elif char == b">":
            return i + 1
        else:
            i += 1
    return -1


def without_internal_subset(file: BinaryIO) -> BinaryIO:
    """`file` (positioned at its start) with the DOCTYPE's internal subset removed, as a readable stream.

    Why: defusedxml refuses every entity declaration, and allowing them lets expat expand nested entities (a
    billion-laughs file grows to megabytes before expat's own guard stops it). Removing the subset leaves no
    declaration to expand. Adobe Illustrator files use their entities only for namespace URIs in the root
    element's start tag (`xmlns="&ns_svg;"`); there, and only there, a reference to a declared plain value
    (no markup or references in it, at most 256 bytes) is replaced by that value, at most 64 times: a
    bounded, one-level text substitution. Any other reference stays, and the parser reports it as undefined.
    Raises ValueError when the DOCTYPE or the root start tag does not end within the first MiB.
    """
    head = file.read(65536)
    while True:
        try:
            subset = _internal_subset(head)
            tag_end = _root_start_tag_end(head, subset[1] if subset else 0) if subset else 0
        except ValueError:
            if len(head) >= _PROLOG_BYTES:
                raise
            subset, tag_end = (0, 0), -1
        if tag_end >= 0:
            break
        more = file.read(65536)
        if not more or len(head) >= _PROLOG_BYTES:
            raise ValueError("the DOCTYPE or the root element's start tag does not end in the first MiB")
        head += more
    if subset is None:
        return io.BufferedReader(_Chain(head, file))  # type: ignore[arg-type]
    start, end = subset
    values = {m.group(1): m.group(2) if m.group(2) is not None else m.group(3) for m in _PLAIN_ENTITY.finditer(
        head[start:end])}
    count = 0

    def replace(match: re.Match[bytes]) -> bytes:
        nonlocal count
        value = values.get(match.group(1))
        if value is None or count >= _MAX_REFERENCES:
            return match.group(0)
        count += 1
        return value

    tag = re.sub(rb"&([A-Za-z_][\w.\-]*);", replace, head[end:tag_end])
    return io.BufferedReader(_Chain(head[:start] + tag + head[tag_end:], file))  # type: ignore[arg-type]


class _Chain(io.RawIOBase):
    """Bytes already read, then the rest of a file: a read-only raw stream."""

    def __init__(self, head: bytes, rest: BinaryIO) -> None:
        self._head = head
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self._head:
            n = min(len(buffer), len(self._head))
            buffer[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        data = self._rest.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def readable_stem(path: str, creator: str = "") -> str:
    """A file name as words: trailing index, the creator's name and separators removed ("" when none left)."""
    stem = Path(path).stem.lower()
    stem = _TRAILING_INDEX.sub("", stem)
    tokens = [t for t in re.split(r"[_\-\s.]+", stem) if t]
    author = [t for t in re.split(r"[^a-z0-9]+", creator.lower()) if t]
    if author and author[0] in tokens[1:]:  # "title_firstname_lastname": cut at the creator's first name
        tokens = tokens[: tokens.index(author[0], 1)]
    words = " ".join(tokens)
    return _TRAILING_INDEX.sub("", words).strip()


def _fallback(item_path: str, metadata: ClipartMetadata) -> tuple[str, str]:
    name = readable_stem(item_path, metadata.creator)
    if name:
        return name, ""
    return ", ".join(metadata.keywords), "keywords"


def clean_title(
    title: str, path: str, metadata: ClipartMetadata | None = None, shared: frozenset[str] = frozenset()
) -> tuple[str, str]:
    """(caption, rule) for a drawing; `shared` holds the titles used by many files (see the module docstring).

    The rule is the one that decided the caption; a caption that fell back to keywords reports
    "<rule>+keywords". The caption is "" only when the title, the file name and the keywords are all empty.
    """
    metadata = metadata or ClipartMetadata(title=title)
    title = _SPACES.sub(" ", title).strip()
    if not title:
        caption, how = _fallback(path, metadata)
        return caption, "empty" + (f"+{how}" if how else "")
    if any(p.search(title) for p in BOILERPLATE_PATTERNS):
        caption, how = _fallback(path, metadata)
        return caption, "boilerplate" + (f"+{how}" if how else "")
    if metadata.creator and title.casefold() == metadata.creator.casefold():
        caption, how = _fallback(path, metadata)
        return caption, "author_title" + (f"+{how}" if how else "")
    match = _AUTHOR_PREFIX.match(title)
    if match:
        rest = match.group("rest").strip()
        if _STEM_LIKE.match(rest.lower()):
            rest = readable_stem(rest) or rest
        return rest, "author_prefix"
    if title in shared:
        name = readable_stem(path, metadata.creator)
        readable_title = title.replace("_", " ")
        if not name or set(name.split()) <= set(readable_title.lower().split()):
            return readable_title, "shared_title"
        return f"{name} ({readable_title})", "shared_title"
    if "_" in title:
        return _SPACES.sub(" ", title.replace("_", " ")).strip(), "underscores"
    return title, "kept"


def _categories(root: Path, path: Path) -> tuple[str, str]:
    parts = path.relative_to(root).parts[:-1]
    return (parts[0] if parts else ""), (parts[1] if len(parts) > 1 else "")


def list_svgs(root: str) -> list[str]:
    """Every .svg under `root` (recursive, hidden entries skipped), sorted."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(os.path.join(folder, f) for f in files if f.lower().endswith(".svg") and not f.startswith("."))
    return sorted(found)


def load_openclipart(root: str | None = None) -> ClipartCatalog:
    """Every drawing under `root` (the Debian install location by default) with its cleaned caption.

    The catalog (immutable) is built once per root and process: listing 8,100 files' metadata takes seconds.
    Raises FileNotFoundError naming the apt-get command when the folder is missing or holds no SVG.
    """
    return _load_openclipart(os.path.abspath(root or OPENCLIPART_ROOT))


@lru_cache(maxsize=4)
def _load_openclipart(root: str) -> ClipartCatalog:
    base = Path(root)
    paths = list_svgs(root) if base.is_dir() else []
    if not paths:
        raise FileNotFoundError(
            f"OpenClipart is not installed: no SVG files under {root}; install it with `{OPENCLIPART_INSTALL}` "
            "(Debian/Ubuntu, after apt-get update)"
        )
    metadata: list[ClipartMetadata] = []
    unreadable: list[tuple[str, str]] = []
    for path in paths:
        try:
            metadata.append(read_metadata(path))
        except Exception as exc:  # OSError, expat's ParseError, defusedxml's refusals
            unreadable.append((path, f"{type(exc).__name__}: {exc}"))
            metadata.append(ClipartMetadata())
    title_counts = Counter(m.title for m in metadata if m.title)
    shared = frozenset(t for t, n in title_counts.items() if n >= SHARED_TITLE_MIN)
    items, rules = [], Counter()
    for path, meta in zip(paths, metadata):
        caption, rule = clean_title(meta.title, path, meta, shared)
        rules[rule] += 1
        category, subcategory = _categories(base, Path(path))
        items.append(ClipartItem(path, category, subcategory, meta, caption, rule))
    return ClipartCatalog(root, tuple(items), dict(sorted(rules.items())), tuple(unreadable))
