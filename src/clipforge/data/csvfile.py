"""Reading CSV/TSV files of image paths and texts, for training (sources/table.py), make-shards and evaluation.

One reader, so that every command treats a damaged table the same way, and never silently:

- Encodings: UTF-8 by default; a byte-order mark selects UTF-8 (Excel's "CSV UTF-8" writes one) or UTF-16 (Excel's
  "Unicode text"). Bytes that do not decode are a `CsvFormatError` naming the line and byte offset and saying to
  re-save the file as UTF-8 or to name its encoding (`encoding="latin-1"`, SourceConfig.encoding, --encoding).
- An unterminated quote: the csv module would read on to the next quote character anywhere in the file, turning
  the rows in between into one field (a 61-line file gave 31 samples without a word). A quote that is never
  closed, or closed only on a later line in a way no valid field allows, or a quoted field whose inner lines
  read as rows of their own (their path column names an image file), is an error naming the line where the quote
  opened. A quoted field may still hold a newline: a caption across two lines is read as written.
- Rows with the wrong number of fields (or broken quoting on one line) are skipped, counted, logged with their
  line numbers and returned in `CsvTable.skipped`; more than `max_bad_fraction` of them (at least 2) is an error,
  since then the separator or the whole file is probably wrong. Blank lines are ignored.
- The file must be a regular file (a FIFO would block, /dev/zero would never end): see clipforge.safeio.
"""

from __future__ import annotations

import codecs
import csv
import io
import logging
import os
from dataclasses import dataclass

from clipforge.models.config import ConfigError
from clipforge.safeio import read_regular_file

log = logging.getLogger(__name__)

DEFAULT_MAX_BAD_FRACTION = 0.05
_SHOW = 5  # malformed lines named in messages
_BOMS = ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))
_REENCODE_HINT = "re-save it as UTF-8 (in Excel: 'CSV UTF-8'), or name its encoding (e.g. encoding='latin-1')"


class CsvFormatError(ConfigError):
    """A CSV/TSV file cannot be read as a table: undecodable bytes, an unterminated quote, too many bad rows."""


class CsvColumnError(CsvFormatError):
    """The header lacks a column the caller needs; `missing`, `columns` and `separator` say what and why."""

    def __init__(self, message: str, missing: list[str], columns: list[str], separator: str) -> None:
        super().__init__(message)
        self.missing, self.columns, self.separator = missing, columns, separator


@dataclass(frozen=True)
class CsvTable:
    """A parsed CSV/TSV file.

    Fields:
        path: the file.
        columns: the header's column names (surrounding whitespace stripped).
        rows: (line number where the row starts, {column: value}) for every well-formed data row, in file order.
        skipped: (line number, reason) for every malformed row that was left out.
        encoding: the encoding the text was decoded with ("utf-8", "utf-8-sig", "utf-16", or the caller's).
        separator: the field separator used.
    """

    path: str
    columns: tuple[str, ...]
    rows: tuple[tuple[int, dict[str, str]], ...]
    skipped: tuple[tuple[int, str], ...]
    encoding: str
    separator: str


def default_separator(path: str | os.PathLike) -> str:
    """Tab for a .tsv file, comma otherwise."""
    return "\t" if os.fspath(path).lower().endswith(".tsv") else ","


def decode_table_bytes(data: bytes, path: str, encoding: str | None = None) -> tuple[str, str]:
    """(text, encoding used) of a CSV file's bytes: BOMs honoured; undecodable bytes: CsvFormatError naming the line."""
    if encoding is None:
        encoding = next((name for bom, name in _BOMS if data.startswith(bom)), "utf-8")
        if encoding == "utf-8" and data[:4096].count(b"\x00") > len(data[:4096]) // 4:
            raise CsvFormatError(
                f"{path}: looks like UTF-16 text without a byte-order mark (many zero bytes); "
                "re-save it as UTF-8, or name its encoding (encoding='utf-16-le')"
            )
    elif codecs.lookup(encoding).name == "utf-8":
        encoding = "utf-8-sig"  # a BOM is never part of the first column's name
    try:
        return data.decode(encoding), encoding
    except LookupError as exc:
        raise CsvFormatError(f"{path}: unknown encoding {encoding!r}; use a Python codec name, e.g. 'latin-1'") from exc
    except UnicodeDecodeError as exc:
        line = data[: exc.start].decode(encoding, errors="replace").count("\n") + 1
        bad = data[exc.start : min(exc.end, exc.start + 4)]
        shown = "utf-8" if encoding == "utf-8-sig" else encoding
        raise CsvFormatError(
            f"{path}: line {line} (byte offset {exc.start}): bytes {bad!r} are not valid {shown} text; "
            f"{_REENCODE_HINT}"
        ) from exc


def read_csv(
    path: str | os.PathLike,
    *,
    separator: str | None = None,
    encoding: str | None = None,
    required: tuple[str, ...] = (),
    path_column: str | None = None,
    max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION,
) -> CsvTable:
    """Parse a CSV/TSV file with a header row (see the module docstring for what is refused and what is skipped).

    Args:
        separator: the field separator; None: tab for .tsv files, comma otherwise.
        encoding: a Python codec name; None: UTF-8, or UTF-16 when the file starts with its byte-order mark.
        required: column names that must be in the header (CsvColumnError names the ones missing).
        path_column: the column of image paths, used to recognise rows swallowed by an unterminated quote.
        max_bad_fraction: more malformed rows than this fraction of all rows (and more than one) is an error.

    Raises:
        FileNotFoundError / PermissionError / IsADirectoryError, NotRegularFileError (a FIFO or device).
        CsvFormatError: undecodable text, an unterminated quote, no header, too many malformed rows.
    """
    name = os.fspath(path)
    sep = separator or default_separator(name)
    text, used = decode_table_bytes(read_regular_file(name, max_bytes=None, what="CSV file"), name, encoding)
    lines = list(io.StringIO(text, newline=""))  # the physical lines the csv reader will see, line_num indexes them
    reader = csv.reader(iter(lines), delimiter=sep, strict=True)
    header: list[str] | None = None
    path_index: int | None = None
    rows: list[tuple[int, dict[str, str]]] = []
    skipped: list[tuple[int, str]] = []
    end = 0
    while True:
        start = end + 1
        try:
            record = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            end = reader.line_num
            _raise_if_unterminated(name, start, end, str(exc))
            skipped.append((start, f"broken quoting ({exc})"))
            continue
        end = reader.line_num
        if not record or all(not field.strip() for field in record):
            continue  # a blank line
        if header is None:
            header = [column.strip() for column in record]
            missing = [c for c in required if c not in header]
            if missing:
                raise CsvColumnError(
                    f"{name}: no column {missing} (separator {sep!r}); the columns are {header}",
                    missing,
                    header,
                    sep,
                )
            path_index = header.index(path_column) if path_column in header else None
            continue
        if end > start and path_index is not None:
            _check_swallowed(name, lines[start - 1 : end], start, sep, len(header), path_index)
        if len(record) != len(header):
            skipped.append((start, f"{len(record)} fields, the header has {len(header)} (separator {sep!r})"))
            continue
        rows.append((start, dict(zip(header, record))))
    if header is None:
        raise CsvFormatError(f"{name}: empty file, no header row; the first line must name the columns")
    total = len(rows) + len(skipped)
    if len(skipped) > 1 and len(skipped) > max_bad_fraction * total:
        raise CsvFormatError(
            f"{name}: {len(skipped)} of {total} rows are malformed ({_describe(skipped)}); check the separator "
            f"(used: {sep!r}) and quote fields that contain it"
        )
    if skipped:
        log.warning("%s: skipped %d malformed row(s): %s", name, len(skipped), _describe(skipped))
    return CsvTable(name, tuple(header), tuple(rows), tuple(skipped), used, sep)


def _describe(skipped: list[tuple[int, str]]) -> str:
    shown = "; ".join(f"line {line}: {reason}" for line, reason in skipped[:_SHOW])
    return shown + (f"; and {len(skipped) - _SHOW} more" if len(skipped) > _SHOW else "")


def _raise_if_unterminated(path: str, start: int, end: int, error: str) -> None:
    """A csv.Error over several lines, or at the end of the file, is a quote opened on `start` and never closed."""
    at_end = "unexpected end of data" in error
    if end > start or at_end:
        closed = "never closed" if at_end else f"only closed on line {end}, in a way no field allows"
        raise CsvFormatError(
            f"{path}:{start}: a quote opened on line {start} is {closed} ({error}), so the lines after it would be "
            f'read as one field; fix the quoting on line {start} (a quote inside a quoted field is written "")'
        )


def _check_swallowed(path: str, lines: list[str], start: int, sep: str, width: int, path_index: int) -> None:
    """Raise when a multi-line record's inner lines read as rows of their own (their path names an image file)."""
    from .sources.folder import FOLDER_IMAGE_EXTS  # here: the sources package imports this module

    for offset, line in enumerate(lines[1:], start=1):
        fields = next(csv.reader([line], delimiter=sep), [])
        if len(fields) == width and fields[path_index].strip().lower().endswith(FOLDER_IMAGE_EXTS):
            raise CsvFormatError(
                f"{path}:{start}: a quote opened on line {start} runs on to line {start + len(lines) - 1}, "
                f"swallowing line {start + offset} ({line.strip()[:60]!r}) and the rows between into one field; "
                f'fix the quoting on line {start} (a quote inside a quoted field is written "")'
            )
