"""CSV/TSV source: one row per sample, an image path column and a caption column (open_clip's CsvDataset).

Column names default to open_clip's (`filepath`, `title`); relative image paths are resolved against the CSV
file's folder. The file is parsed once by clipforge.data.csvfile (quoted fields may hold separators and newlines;
BOMs are honoured; undecodable text and unterminated quotes are errors naming the line; malformed rows are
skipped, logged and kept in `skipped_rows`). Rows with an empty caption are kept and reported as bad when drawn,
so the counts name the image they belong to.
"""

from __future__ import annotations

import os

from clipforge.models.config import ConfigError

from ..csvfile import CsvColumnError, read_csv
from .base import FileListSource


class CsvSource(FileListSource):
    """Samples listed in a CSV/TSV file."""

    def __init__(
        self,
        path: str,
        image_column: str = "filepath",
        caption_column: str = "title",
        separator: str | None = None,
        *,
        encoding: str | None = None,
    ) -> None:
        folder = os.path.dirname(os.path.abspath(path))
        try:
            table = read_csv(
                path,
                separator=separator,
                encoding=encoding,
                required=(image_column, caption_column),
                path_column=image_column,
            )
        except CsvColumnError as exc:
            raise CsvColumnError(
                f"{exc}; set image_column / caption_column / separator in the SourceConfig",
                exc.missing,
                exc.columns,
                exc.separator,
            ) from exc
        #: (line number, reason) of the rows left out as malformed
        self.skipped_rows = table.skipped
        pairs = []
        for _, row in table.rows:
            image = row[image_column].strip()
            if not image:
                continue
            pairs.append((os.path.join(folder, image), row[caption_column]))
        if not pairs:
            raise ConfigError(f"{path} lists no images")
        super().__init__(path, pairs)
