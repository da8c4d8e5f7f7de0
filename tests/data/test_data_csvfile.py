"""The shared CSV/TSV reader (clipforge.data.csvfile) and its users: training's CsvSource, eval's load_csv and
`clipforge data make-shards --from-csv`. Damaged tables are reported with line numbers, never parsed silently
into fewer samples; BOMs and UTF-16 are read; undecodable bytes name the line and what to do."""

import logging
import os

import pytest

from clipforge.cli.main import main as cli
from clipforge.data import SourceConfig
from clipforge.data.csvfile import CsvFormatError, read_csv
from clipforge.data.sources import CsvSource, build_source
from clipforge.eval.datasets.table import load_csv
from clipforge.models.config import ConfigError
from clipforge.safeio import NotRegularFileError


def _table(path, lines, encoding="utf-8"):
    path.write_bytes(("\n".join(lines) + "\n").encode(encoding))
    return path


def _rows(count, header="filepath,title"):
    return [header] + [f"img{i}.png,caption {i}" for i in range(count)]


@pytest.mark.parametrize(
    "broken, expected",
    [
        ('img29.png,"caption 29', r"data.csv:31: a quote opened on line 31 is never closed"),  # runs to the end
        ('img29.png,"caption 29', r"data.csv:31: .*only closed on line 46"),  # closed by a later quoted field
        ('img29.png,"caption 29', r"data.csv:31: .*swallowing line 32 \('img30.png,caption 30'\)"),  # closed cleanly
    ],
    ids=["never-closed", "closed-by-a-quoted-field", "closed-cleanly"],
)
def test_an_unterminated_quote_is_an_error_naming_its_line(tmp_path, broken, expected, request):
    lines = _rows(60)  # 61 lines: the old reader made 31 samples of them without a word
    lines[30] = broken
    variant = request.node.callspec.id
    if variant == "closed-by-a-quoted-field":
        lines[45] = 'img44.png,"caption" 44'
    if variant == "closed-cleanly":
        lines[45] = 'img44.png,caption 44"'
    path = _table(tmp_path / "data.csv", lines)
    with pytest.raises(CsvFormatError, match=expected):
        CsvSource(str(path))
    with pytest.raises(CsvFormatError, match=expected):
        load_csv(str(path), path_column="filepath", caption_column="title")


def test_a_quoted_caption_may_span_lines_and_hold_separators(tmp_path):
    path = _table(tmp_path / "data.csv", ["filepath,title", 'a.png,"two lines,\nreally"', "b.png,plain"])
    table = read_csv(path, path_column="filepath")
    assert table.rows == (
        (2, {"filepath": "a.png", "title": "two lines,\nreally"}),
        (4, {"filepath": "b.png", "title": "plain"}),
    )
    assert table.skipped == ()


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16"], ids=["utf-8-bom", "utf-16-bom"])
def test_byte_order_marks_are_read(tmp_path, encoding):
    lines = ["filepath,title", "images/a.png,café au lait", "images/b.png,naïve"]
    path = _table(tmp_path / "data.csv", lines, encoding)
    source = CsvSource(str(path))  # the BOM used to become part of "filepath": no such column
    assert [os.path.basename(p) for p in source.paths] == ["a.png", "b.png"]
    assert source.captions == ["café au lait", "naïve"]
    evaluated = load_csv(str(path), path_column="filepath", caption_column="title")
    assert evaluated.captions == (("café au lait",), ("naïve",))


def test_undecodable_text_names_line_and_offset_and_the_encoding_option_reads_it(tmp_path):
    lines = ["filepath,title", "a.png,plain", "b.png,café"]
    path = _table(tmp_path / "data.csv", lines, "latin-1")
    expected = r"data.csv: line 3 \(byte offset 36\): bytes b'\\xe9' are not valid utf-8"  # 15 + 12 + len("b.png,caf")
    with pytest.raises(CsvFormatError, match=expected) as raised:
        CsvSource(str(path))
    assert "re-save it as UTF-8" in str(raised.value) and "encoding='latin-1'" in str(raised.value)
    source = build_source(SourceConfig("csv", str(path), encoding="latin-1"))
    assert source.captions == ["plain", "café"]
    with pytest.raises(ConfigError, match="not a Python codec"):
        SourceConfig("csv", str(path), encoding="no-such-codec")


def test_utf16_without_a_bom_is_named(tmp_path):
    path = _table(tmp_path / "data.csv", ["filepath,title", "a.png,x"], "utf-16-le")
    with pytest.raises(CsvFormatError, match="UTF-16 text without a byte-order mark"):
        read_csv(path)


def test_rows_with_the_wrong_field_count_are_skipped_with_line_numbers(tmp_path, caplog):
    lines = _rows(40)
    lines[5] = "img4.png,a caption, with an unquoted comma"  # line 6
    lines.insert(20, "")  # blank lines are not rows
    path = _table(tmp_path / "data.csv", lines)
    with caplog.at_level(logging.WARNING):
        source = CsvSource(str(path))
    assert len(source) == 39
    assert source.skipped_rows == ((6, "3 fields, the header has 2 (separator ',')"),)
    assert "data.csv: skipped 1 malformed row(s): line 6" in caplog.text


def test_many_malformed_rows_are_an_error(tmp_path):
    path = _table(tmp_path / "data.tsv", _rows(40))  # comma-separated content, read as a .tsv: one field a row
    with pytest.raises(CsvFormatError, match="no column"):
        CsvSource(str(path))
    lines = _rows(40)
    for i in (3, 9, 15):
        lines[i] += ",extra"
    with pytest.raises(CsvFormatError, match=r"3 of 40 rows are malformed \(line 4: 3 fields.*check the separator"):
        CsvSource(str(_table(tmp_path / "data.csv", lines)))


def test_a_fifo_as_the_csv_file_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "data.csv"
    os.mkfifo(fifo)  # open() would wait for a writer forever
    with pytest.raises(NotRegularFileError, match="FIFO"):
        CsvSource(str(fifo))


def test_make_shards_reports_csv_problems(tmp_path, synth, capsys):
    path = synth.write_csv(tmp_path, 6)
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[2] = lines[2] + ",oops"  # line 3: three fields
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    argv = ["data", "make-shards", "--from-csv", str(path), "--out", str(out), "--no-progress"]
    assert cli(argv) == 0
    captured = capsys.readouterr()
    assert "wrote 5 samples in 1 shards" in captured.out and "skipped 1 bad inputs" in captured.out
    assert f"{path}:3: malformed row: 3 fields" in captured.err

    latin = _table(tmp_path / "latin.csv", ["filepath,title", "images/caption0.png,café"], "latin-1")
    argv = ["data", "make-shards", "--from-csv", str(latin), "--out", str(tmp_path / "out2"), "--no-progress"]
    assert cli(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "line 2 (byte offset 38)" in err and "--encoding 'latin-1'" in err
    assert cli([*argv, "--encoding", "latin-1"]) == 0
    assert "wrote 1 samples" in capsys.readouterr().out
