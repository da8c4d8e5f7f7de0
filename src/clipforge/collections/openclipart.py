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

import os
import re
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

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

    Internal entity declarations (common in Adobe Illustrator exports) are allowed, since expat caps their
    expansion; external entities and DTDs are refused.
    """
    from defusedxml.ElementTree import iterparse

    with open_regular_file(path, what="SVG file") as file:
        if os.fstat(file.fileno()).st_size > MAX_METADATA_BYTES:
            raise OSError(f"{path}: larger than {MAX_METADATA_BYTES // 2**20} MiB")
        for _, element in iterparse(file, events=("end",), forbid_entities=False):
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
