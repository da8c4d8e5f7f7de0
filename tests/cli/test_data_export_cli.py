"""`clipforge data export-collection`: --help, a tiny export, the summary line, refusals with exit code 2."""

from __future__ import annotations

import csv

import pytest

from clipforge.cli.data import main

SVG = (
    '<svg xmlns="http://www.w3.org/2000/svg" width="40" height="20"><title>t</title>'
    '<rect width="40" height="20" fill="#00f"/></svg>'
)


@pytest.fixture
def clipart(tmp_path):
    root = tmp_path / "svg"
    (root / "shapes").mkdir(parents=True)
    for name in ("blue_box", "blue_bar"):
        (root / "shapes" / f"{name}.svg").write_text(SVG)
    (root / "shapes" / "broken.svg").write_text("<svg")
    return root


def test_missing_renderer_says_what_to_install(clipart, tmp_path, capsys, monkeypatch):
    """Without cairosvg the export stops with the pip command instead of counting every drawing as broken."""
    import sys

    monkeypatch.setitem(sys.modules, "cairosvg", None)  # `import cairosvg` now raises ImportError
    code = main(["export-collection", "openclipart", "--source", str(clipart), "--out", str(tmp_path / "o"), "-q"])
    assert code != 0 and "pip install 'clipforge[collections]'" in capsys.readouterr().err


def test_help_explains(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["export-collection", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for words in ("captions.csv", "skipped.jsonl", "resume", "--limit", "--workers", "index build"):
        assert words in text


def test_export_prints_summary_and_lists_skipped(clipart, tmp_path, capsys):
    pytest.importorskip("cairosvg")  # the optional `collections` extra renders the drawings
    out = tmp_path / "out"
    argv = ["export-collection", "openclipart", "--source", str(clipart), "--out", str(out), "--size", "24",
            "--cache-dir", str(tmp_path / "cache"), "--no-progress"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "exported 2 openclipart images" in captured.out and "skipped 1" in captured.out
    assert "broken.svg" in captured.err  # the reason is shown, not only counted
    with open(out / "captions.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert [r["image_path"] for r in rows] == ["shapes/blue_bar.png", "shapes/blue_box.png"]
    assert main(argv) == 0
    assert "0 rendered now, 2 kept" in capsys.readouterr().out


def test_refusals_exit_2(clipart, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    assert main(["export-collection", "openclipart", "--source", str(clipart), "--out", str(mine)]) == 2
    assert "not empty" in capsys.readouterr().err and (mine / "notes.txt").read_text() == "keep me"
    out = str(tmp_path / "x")
    assert main(["export-collection", "openclipart", "--variants", "--out", out]) == 2
    assert main(["export-collection", "emoji", "--size", "8", "--out", out]) == 2
    assert "--size must be in 16..4096" in capsys.readouterr().err
    assert main(["export-collection", "openclipart", "--source", str(tmp_path / "none"), "--out", out]) == 3
    assert "apt-get install -y openclipart-svg" in capsys.readouterr().err
