"""Export a built-in collection as PNG files plus a captions CSV, the input `clipforge index build` and
clip-retrieval-style tools read.

Layout of an export folder DIR:

    DIR/export.json       what was exported (collection, size, variants): written first, it marks DIR as an export
    DIR/<entry.relative>  one size x size RGB PNG per item ("animals/birds/baby_tux.png", "smileys_emotion/1f600.png")
    DIR/captions.csv      image_path,caption,title,keywords,category: one row per PNG, image_path relative to DIR
    DIR/skipped.jsonl     one JSON object per item that could not be rendered: {"item", "image_path", "error"}

Paths in captions.csv are relative to DIR (the CSV's folder), which is how `clipforge index build DIR/captions.csv`
resolves them, so the folder can be moved or copied as a whole. `image_path` and `caption` are the first column
names index build and clip-retrieval look for; title, keywords and category become metadata columns.

Every file is written atomically (temporary file + rename) and captions.csv last, so an interrupted export is
resumed by running it again: a PNG already in DIR (complete: it ends with PNG's IEND chunk) is kept, not rendered
again. Renders go through the shared RenderCache, which also remembers failures, so a rerun neither renders the
exported items nor retries the ones that failed. A folder that holds anything but an earlier export of the same
collection, size and variants is refused: an export never overwrites a user's files.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from clipforge.atomic import atomic_open, atomic_write_bytes, remove_stale_temporaries
from clipforge.jsonio import json_text
from clipforge.safeio import read_regular_file

from .entries import COLLECTIONS, CollectionEntry, collection_entries
from .render import RenderCache, RenderResult, render_many

MARKER = "export.json"
CAPTIONS = "captions.csv"
SKIPPED = "skipped.jsonl"
CSV_COLUMNS = ("image_path", "caption", "title", "keywords", "category")
EXPORT_FORMAT = 1
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the IEND chunk (length 0, type, CRC) every complete PNG ends with
_MAX_MARKER_BYTES = 2**16


class ExportFolderError(Exception):
    """The output folder cannot take this export (holds other files, or another export); the message says what
    to do."""


@dataclass(frozen=True)
class ExportSettings:
    """What an export is made of; an existing export is continued only when these match.

    Fields:
        collection: "openclipart" or "emoji".
        size: PNG side in pixels.
        variants: emoji skin-tone variants kept.
    """

    collection: str
    size: int
    variants: bool = False

    def __post_init__(self) -> None:
        if self.collection not in COLLECTIONS:
            raise ValueError(f"unknown collection {self.collection!r}; known: {list(COLLECTIONS)}")

    def record(self) -> dict:
        """The marker file's content."""
        return {"format": EXPORT_FORMAT, "collection": self.collection, "size": self.size, "variants": self.variants}


@dataclass(frozen=True)
class ExportSummary:
    """What an export did.

    Fields:
        out: the export folder.
        exported: PNGs listed in captions.csv (rendered now or kept from an earlier run).
        rendered: PNGs written by this run.
        kept: PNGs already in the folder from an earlier run.
        skipped: (item label, reason) of items that could not be rendered; listed in skipped.jsonl.
    """

    out: str
    exported: int
    rendered: int
    kept: int
    skipped: tuple[tuple[str, str], ...]


def is_complete_png(path: str | os.PathLike) -> bool:
    """Whether `path` is a regular file that starts with PNG's signature and ends with its IEND chunk.

    Atomic writes never leave a partial PNG, but a folder copied by hand or a full disk in another tool can: such
    a file is rendered again rather than listed."""
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):  # never open a FIFO (it would block) or follow a link
            return False
        with open(path, "rb") as file:
            if file.read(8) != _PNG_SIGNATURE:
                return False
            file.seek(0, os.SEEK_END)
            if file.tell() < len(_PNG_SIGNATURE) + len(_PNG_END):
                return False
            file.seek(-len(_PNG_END), os.SEEK_END)
            return file.read() == _PNG_END
    except OSError:
        return False


def check_export_folder(out: Path, settings: ExportSettings) -> bool:
    """Refuse `out` unless it is missing, empty, or an earlier export with the same settings; True when resuming.

    Raises ExportFolderError naming what was found and what to do.
    """
    if not out.exists():
        return False
    if not out.is_dir():
        raise ExportFolderError(f"--out {out} exists and is not a folder; give a new or empty folder")
    names = [n for n in os.listdir(out) if n != ".lock"]
    if not names:
        return False
    marker = out / MARKER
    if not marker.is_file():
        shown = ", ".join(sorted(names)[:3]) + (", ..." if len(names) > 3 else "")
        raise ExportFolderError(
            f"--out {out} is not empty ({shown}) and is not an earlier export (no {MARKER}); give a new or empty "
            "folder: an export never writes into a folder of other files"
        )
    try:
        found = json.loads(read_regular_file(marker, _MAX_MARKER_BYTES, what="export marker").decode("utf-8"))
    except (OSError, ValueError) as exc:
        raise ExportFolderError(f"{marker}: unreadable export marker ({exc}); give a new or empty folder") from exc
    wanted = settings.record()
    if not isinstance(found, dict) or any(found.get(k) != v for k, v in wanted.items()):
        raise ExportFolderError(
            f"--out {out} holds another export ({MARKER}: {found}), not one of this collection, size and variants "
            f"({wanted}); give a new or empty folder, or the same settings to continue that export"
        )
    return True


def _copy_png(cached: str, target: Path) -> None:
    """Copy the cached render to `target` atomically (a copy, not a link: editing an exported file must not
    change the cache)."""
    with open(cached, "rb") as source, atomic_open(target) as handle:
        shutil.copyfileobj(source, handle)


def _csv_bytes(rows: list[CollectionEntry]) -> bytes:
    text = io.StringIO(newline="")
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for entry in rows:
        writer.writerow([entry.relative, entry.caption, entry.title, entry.keywords, entry.category])
    return text.getvalue().encode("utf-8")


def export_collection(
    settings: ExportSettings,
    out: str | os.PathLike,
    *,
    root: str | None = None,
    limit: int | None = None,
    workers: int = 0,
    cache: RenderCache | None = None,
    on_total: Callable[[int], None] | None = None,
    on_item: Callable[[], None] | None = None,
) -> ExportSummary:
    """Render the items of a collection into `out` with captions.csv and skipped.jsonl (see the module docstring).

    Args:
        root: openclipart: the SVG folder; emoji: the font file (None: the Debian install locations).
        limit: export the first `limit` items only (a quick try); None: all.
        workers: render worker processes (0: in this process).
        cache: where renders are kept across runs (default: the user's render cache).
        on_total / on_item: progress callbacks (the number of items, then one call per item done).

    Raises ExportFolderError when `out` is not usable, FileNotFoundError naming the install command when the
    collection is not installed. The caller holds `out`'s lock (clipforge.locking.output_lock).
    """
    out = Path(out)
    resuming = check_export_folder(out, settings)
    out.mkdir(parents=True, exist_ok=True)
    if not resuming:
        atomic_write_bytes(out / MARKER, (json_text(settings.record(), indent=2) + "\n").encode("utf-8"))
    entries = collection_entries(settings.collection, settings.size, root, variants=settings.variants)
    if limit is not None:
        entries = entries[:limit]
    for folder in {(out / e.relative).parent for e in entries} | {out}:
        remove_stale_temporaries(folder)  # what a killed export left; we hold the lock
    if on_total is not None:
        on_total(len(entries))
    todo = []
    for index, entry in enumerate(entries):
        if is_complete_png(out / entry.relative):
            if on_item is not None:
                on_item()
        else:
            todo.append(index)
    cache = cache or RenderCache()
    failed: dict[int, str] = {}

    def finish(result: RenderResult) -> None:
        index = todo[result.index]
        if result.png is None:
            failed[index] = result.error or "failed"
        else:
            _copy_png(result.png, out / entries[index].relative)
        if on_item is not None:
            on_item()

    render_many([entries[i].job for i in todo], cache, workers=workers, on_result=finish)
    skipped = tuple((entries[i].job.label, failed[i]) for i in sorted(failed))
    lines = [
        json_text({"item": entries[i].job.label, "image_path": entries[i].relative, "error": failed[i]})
        for i in sorted(failed)
    ]
    atomic_write_bytes(out / SKIPPED, "".join(line + "\n" for line in lines).encode("utf-8"))
    exported = [e for i, e in enumerate(entries) if i not in failed]
    atomic_write_bytes(out / CAPTIONS, _csv_bytes(exported))  # last: its presence means the export is whole
    return ExportSummary(str(out), len(exported), len(todo) - len(failed), len(entries) - len(todo), skipped)
