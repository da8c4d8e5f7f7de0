"""CSV/TSV evaluation sets: one row per (image, label) for classification, or per (image, caption) for retrieval.

Columns are found by header name (`path` and `label` or `caption` by default; any names can be passed).
Relative image paths are relative to the CSV file's folder. For retrieval, several rows with the same path give
that image several captions (in row order); images keep the order of their first row. For classification the
label is a class name; the class names are the sorted distinct labels. A ".tsv" file is read tab-separated.
"""

from __future__ import annotations

import os
from pathlib import Path

from clipforge.data.csvfile import read_csv
from clipforge.zeroshot import get_templates

from .base import ClassificationSet, DatasetNotFound, PathImages, RetrievalSet, fingerprint

CSV_LAYOUT = "a CSV file with a header: path,label (classification) or path,caption (retrieval); or ROOT/SPLIT.csv"


def _find_csv(root: str | None, split: str) -> Path:
    if root is not None:
        path = Path(root)
        if path.is_dir():
            for suffix in (".csv", ".tsv"):
                if (path / f"{split}{suffix}").is_file():
                    return path / f"{split}{suffix}"
        elif path.is_file():
            return path
    raise DatasetNotFound("csv", root, CSV_LAYOUT)


def _read_rows(path: Path, delimiter: str | None, path_column: str) -> tuple[list[str], list[tuple[int, dict]]]:
    """(columns, [(line, row)]) by the shared CSV reader: BOMs, encodings and bad quoting are reported there."""
    table = read_csv(path, separator=delimiter, path_column=path_column)
    return list(table.columns), list(table.rows)


def _column(columns: list[str], wanted: str, path: Path, role: str) -> str:
    if wanted not in columns:
        raise ValueError(
            f"{path}: no {role} column {wanted!r} (columns: {columns}); name yours with "
            f"`clipforge eval --option {role}_column=NAME` (options={{'{role}_column': NAME}} in Python)"
        )
    return wanted


def load_csv(
    root: str | None,
    split: str = "test",
    *,
    task: str | None = None,
    path_column: str = "path",
    label_column: str = "label",
    caption_column: str = "caption",
    delimiter: str | None = None,
    templates: str = "simple",
) -> ClassificationSet | RetrievalSet:
    """A CSV/TSV file (root), or ROOT/SPLIT.csv when root is a folder.

    Args:
        task: "classification" or "retrieval"; by default classification when the label column exists, else
            retrieval.
        path_column, label_column, caption_column: header names of the columns.
        delimiter: the field separator; by default tab for .tsv files and comma otherwise.
        templates: the template set (name or file) for classification.
    """
    csv_path = _find_csv(root, split)
    columns, rows = _read_rows(csv_path, delimiter, path_column)
    if task is None:
        task = "classification" if label_column in columns else "retrieval"
    if task not in ("classification", "retrieval"):
        raise ValueError(f"csv: task must be 'classification' or 'retrieval', got {task!r}")
    path_key = _column(columns, path_column, csv_path, "path")
    text_key = _column(
        columns,
        label_column if task == "classification" else caption_column,
        csv_path,
        "label" if task == "classification" else "caption",
    )
    base = csv_path.parent
    pairs = []
    for number, row in rows:
        image, text = (row.get(path_key) or "").strip(), (row.get(text_key) or "").strip()
        if not image or not text:
            raise ValueError(f"{csv_path}:{number}: empty {path_key!r} or {text_key!r}")
        pairs.append((image, text))
    if not pairs:
        raise ValueError(f"{csv_path}: no rows")

    def resolve(p: str) -> str:
        return p if os.path.isabs(p) else str(base / p)

    if task == "classification":
        classnames = sorted({text for _, text in pairs})
        index = {c: i for i, c in enumerate(classnames)}
        return ClassificationSet(
            name="csv",
            split=split,
            classnames=tuple(classnames),
            templates=tuple(get_templates(templates)),
            labels=tuple(index[text] for _, text in pairs),
            fingerprint=fingerprint("csv", split, csv_path, [p for p, _ in pairs]),
            images=PathImages(tuple(resolve(p) for p, _ in pairs)),
        )
    captions: dict[str, list[str]] = {}
    for image, text in pairs:
        captions.setdefault(image, []).append(text)
    return RetrievalSet(
        name="csv",
        split=split,
        captions=tuple(tuple(c) for c in captions.values()),
        fingerprint=fingerprint("csv", split, csv_path, list(captions)),
        images=PathImages(tuple(resolve(p) for p in captions)),
    )
