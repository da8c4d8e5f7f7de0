"""Exporting a collection: PNGs + captions.csv + skipped.jsonl, resumable, never into a folder of other files."""

from __future__ import annotations

import csv
import json
import os

import pytest
from PIL import Image

import clipforge.collections.render as render_module
from clipforge.collections.emoji import EMOJI_FONT
from clipforge.collections.export import (
    CAPTIONS,
    CSV_COLUMNS,
    MARKER,
    SKIPPED,
    ExportFolderError,
    ExportSettings,
    export_collection,
    is_complete_png,
)
from clipforge.collections.render import RenderCache
from clipforge.search.collection import detect_source, enumerate_source

SVG = """<?xml version="1.0"?>
<svg xmlns="http://www.w3.org/2000/svg" xmlns:dc="http://purl.org/dc/elements/1.1/"
 xmlns:cc="http://web.resource.org/cc/" xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"
 width="100" height="{height}">
 <metadata><rdf:RDF><cc:Work rdf:about="">
  <dc:title>{title}</dc:title>
  <dc:subject><rdf:Bag><rdf:li>shape</rdf:li><rdf:li>{n}</rdf:li></rdf:Bag></dc:subject>
 </cc:Work></rdf:RDF></metadata>
 <rect x="5" y="5" width="90" height="{inner}" fill="#{n}0{n}0ff"/>
</svg>
"""


def _read_csv(path):
    with open(path, newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


def _pngs(out):
    return sorted(
        os.path.relpath(os.path.join(folder, f), out)
        for folder, _, files in os.walk(out)
        for f in files
        if f.endswith(".png")
    )


@pytest.fixture
def clipart(tmp_path):
    """Ten drawings in two categories (with a comma in one title) and one broken SVG."""
    root = tmp_path / "svg"
    for n in range(10):
        folder = root / ("shapes" if n < 6 else "signs") / ("boxes" if n % 2 else "")
        folder.mkdir(parents=True, exist_ok=True)
        title = f"Box {n}, tall" if n == 3 else f"Box {n}"
        (folder / f"box_{n}.svg").write_text(SVG.format(title=title, n=n, height=50 + 10 * n, inner=40 + 10 * n))
    (root / "signs" / "broken.svg").write_text("<svg xmlns='http://www.w3.org/2000/svg'><rect", encoding="utf-8")
    return root


def _refuse_render(job):
    raise AssertionError(f"rendered again: {job}")


def test_export_clipart_csv_matches_pngs_broken_svg_listed_rerun_renders_nothing(clipart, tmp_path, monkeypatch):
    out = tmp_path / "export"
    cache = RenderCache(tmp_path / "cache")
    settings = ExportSettings("openclipart", 32)
    ticks = []
    summary = export_collection(settings, out, root=str(clipart), cache=cache, on_item=lambda: ticks.append(1))
    assert (summary.exported, summary.rendered, summary.kept) == (10, 10, 0)
    assert len(ticks) == 11
    assert [os.path.basename(label) for label, _ in summary.skipped] == ["broken.svg"]

    rows = _read_csv(out / CAPTIONS)
    assert tuple(rows[0]) == CSV_COLUMNS
    assert sorted(r["image_path"] for r in rows) == _pngs(out)  # one row per PNG, paths relative to the export
    assert len(rows) == 10
    by_path = {r["image_path"]: r for r in rows}
    assert by_path["shapes/boxes/box_3.png"]["caption"] == "Box 3, tall"  # quoted, not split at the comma
    assert by_path["signs/box_6.png"]["category"] == "signs"
    assert by_path["signs/box_6.png"]["keywords"] == "shape, 6"
    for row in rows:
        with Image.open(out / row["image_path"]) as image:
            assert image.size == (32, 32) and image.mode == "RGB"
    skipped = [json.loads(line) for line in (out / SKIPPED).read_text().splitlines()]
    assert len(skipped) == 1 and skipped[0]["image_path"] == "signs/broken.png" and "cairosvg" in skipped[0]["error"]
    assert json.loads((out / MARKER).read_text())["collection"] == "openclipart"

    # clipforge index build reads the CSV: every row resolves to its PNG, with the caption and metadata columns
    listed = enumerate_source(detect_source(str(out / CAPTIONS)))
    assert not listed.skipped and len(listed.items) == 10
    assert {i.url for i in listed.items} == {str(out / p) for p in _pngs(out)}
    assert listed.column_names == ("title", "keywords", "category")

    # a rerun keeps every PNG and does not retry the failure (the cache remembers it)
    monkeypatch.setattr(render_module, "render_job", _refuse_render)
    before = (out / CAPTIONS).read_bytes()
    again = export_collection(settings, out, root=str(clipart), cache=cache)
    assert (again.exported, again.rendered, again.kept, len(again.skipped)) == (10, 0, 10, 1)
    assert (out / CAPTIONS).read_bytes() == before


def test_interrupted_export_resumes_and_redoes_incomplete_pngs(clipart, tmp_path):
    out = tmp_path / "export"
    cache = RenderCache(tmp_path / "cache")
    settings = ExportSettings("openclipart", 32)
    first = export_collection(settings, out, root=str(clipart), cache=cache, limit=4)
    assert first.exported == 4 and len(_read_csv(out / CAPTIONS)) == 4
    # what a killed run leaves: a truncated PNG (copied by another tool) and a temporary file
    victim = out / _read_csv(out / CAPTIONS)[0]["image_path"]
    victim.write_bytes(victim.read_bytes()[:-20])
    assert not is_complete_png(victim)
    stale = victim.parent / f".x.png.{os.getpid()}.clipforge-partial.tmp"
    stale.write_bytes(b"partial")
    full = export_collection(settings, out, root=str(clipart), cache=RenderCache(tmp_path / "cache2"))
    assert (full.exported, full.kept, full.rendered) == (10, 3, 7)  # 4 kept less the truncated one
    assert is_complete_png(victim) and not stale.exists()
    assert len(_read_csv(out / CAPTIONS)) == 10


def test_refuses_a_folder_of_other_files_and_another_export(clipart, tmp_path):
    mine = tmp_path / "photos"
    mine.mkdir()
    (mine / "holiday.png").write_bytes(b"mine")
    with pytest.raises(ExportFolderError, match="not empty.*holiday.png"):
        export_collection(ExportSettings("openclipart", 32), mine, root=str(clipart))
    assert (mine / "holiday.png").read_bytes() == b"mine" and sorted(os.listdir(mine)) == ["holiday.png"]

    out = tmp_path / "export"
    export_collection(ExportSettings("openclipart", 32), out, root=str(clipart), limit=1, cache=RenderCache(tmp_path))
    with pytest.raises(ExportFolderError, match="another export"):
        export_collection(ExportSettings("openclipart", 48), out, root=str(clipart), limit=1)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ExportFolderError, match="not a folder"):
        export_collection(ExportSettings("openclipart", 32), tmp_path / "file", root=str(clipart))
    with pytest.raises(ValueError, match="unknown collection"):
        ExportSettings("photos", 32)


@pytest.mark.skipif(not os.path.isfile(EMOJI_FONT), reason="fonts-noto-color-emoji is not installed")
def test_export_ten_emoji(tmp_path):
    out = tmp_path / "emoji"
    summary = export_collection(ExportSettings("emoji", 32), out, limit=10, cache=RenderCache(tmp_path / "c"))
    assert summary.exported == 10 and not summary.skipped
    rows = _read_csv(out / CAPTIONS)
    assert sorted(r["image_path"] for r in rows) == _pngs(out)
    assert all(r["category"] == "Smileys & Emotion" and r["caption"] for r in rows)
    assert all(r["image_path"].startswith("smileys_emotion/") for r in rows)
