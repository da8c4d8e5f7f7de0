"""CSV/TSV source: one row per sample, an image path column and a caption column (open_clip's CsvDataset).

Column names default to open_clip's (`filepath`, `title`); relative image paths are resolved against the CSV
file's folder. The file is parsed once with the csv module (quoted fields may hold separators and newlines).
Rows with an empty caption are kept and reported as bad when drawn, so the counts name the image they belong to.
"""

from __future__ import annotations

import csv
import os

from clipforge.models.config import ConfigError

from .base import FileListSource


class CsvSource(FileListSource):
    """Samples listed in a CSV/TSV file."""

    def __init__(
        self, path: str, image_column: str = "filepath", caption_column: str = "title", separator: str | None = None
    ) -> None:
        if separator is None:
            separator = "\t" if path.lower().endswith(".tsv") else ","
        folder = os.path.dirname(os.path.abspath(path))
        with open(path, encoding="utf-8", newline="") as file:
            reader = csv.DictReader(file, delimiter=separator)
            columns = reader.fieldnames or []
            missing = [c for c in (image_column, caption_column) if c not in columns]
            if missing:
                raise ConfigError(
                    f"{path}: no column {missing} (separator {separator!r}); the columns are {columns}; "
                    "set image_column / caption_column / separator in the SourceConfig"
                )
            pairs = []
            for row in reader:
                image = (row.get(image_column) or "").strip()
                if not image:
                    continue
                pairs.append((os.path.join(folder, image), row.get(caption_column)))
        if not pairs:
            raise ConfigError(f"{path} lists no images")
        super().__init__(path, pairs)
