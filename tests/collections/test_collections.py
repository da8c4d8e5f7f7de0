"""Built-in collections: title cleaning, rendering with its cache and failures, training sources, eval sets."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from clipforge.collections import RenderCache, RenderJob, clean_title, load_emoji, render_many
from clipforge.collections.emoji import EMOJI_FONT
from clipforge.collections.openclipart import (
    OPENCLIPART_ROOT,
    ClipartMetadata,
    load_openclipart,
    read_metadata,
    readable_stem,
)
from clipforge.data.bad import BadSample
from clipforge.data.config import SourceConfig
from clipforge.data.sources import build_source
from clipforge.eval.datasets import ClassificationSet, DatasetNotFound, RetrievalSet, load_eval_dataset

HAVE_CLIPART = os.path.isdir(OPENCLIPART_ROOT)
HAVE_FONT = os.path.isfile(EMOJI_FONT)
needs_clipart = pytest.mark.skipif(not HAVE_CLIPART, reason="openclipart-svg is not installed")
needs_font = pytest.mark.skipif(not HAVE_FONT, reason="fonts-noto-color-emoji is not installed")

SVG = """<?xml version="1.0"?>
<svg xmlns="http://www.w3.org/2000/svg" xmlns:dc="http://purl.org/dc/elements/1.1/"
 xmlns:cc="http://web.resource.org/cc/" xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"
 width="200" height="100">
 <metadata><rdf:RDF><cc:Work rdf:about="">
  <dc:title>{title}</dc:title><dc:description>a test</dc:description>
  <dc:subject><rdf:Bag><rdf:li>red</rdf:li><rdf:li>box</rdf:li></rdf:Bag></dc:subject>
  <dc:creator><cc:Agent><dc:title>Jane Doe</dc:title></cc:Agent></dc:creator>
 </cc:Work></rdf:RDF></metadata>
 <rect x="10" y="10" width="180" height="80" fill="#ff0000"/>
</svg>
"""


def _write(path, title="Red Box"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(SVG.format(title=title), encoding="utf-8")
    return path


@pytest.fixture
def clipart(tmp_path):
    """A tiny OpenClipart-style tree: two categories, one broken SVG."""
    root = tmp_path / "svg"
    _write(root / "shapes" / "red_box_jane_doe_01.svg")
    _write(root / "shapes" / "boxes" / "other_box.svg", "Part of the Flat Icon Collection (Wed Aug 25 2004)")
    _write(root / "food" / "apple_02.svg", "")
    (root / "food" / "broken.svg").write_text("<svg xmlns='http://www.w3.org/2000/svg'><rect", encoding="utf-8")
    return root


@pytest.mark.parametrize(
    ("title", "path", "creator", "expected", "rule"),
    [
        ("", "x/lightbulb_jon_phillips_01.svg", "Jon Phillips", "lightbulb", "empty"),
        ("Part of the Flat Icon Collection (Wed Aug 25 23:29:46 2004)", "a/kbackgammon.svg", "", "kbackgammon",
         "boilerplate"),
        ("Jon Phillips", "a/heart_jon_phillips_01.svg", "Jon Phillips", "heart", "author_title"),
        ("Clipart by Nicu Buculei - smiley111", "a/smiley3.svg", "", "smiley", "author_prefix"),
        ("Clipart by Nicu Buculei - Happy Sun", "a/sun.svg", "", "Happy Sun", "author_prefix"),
        ("Switch_HP_2524", "a/switch.svg", "", "Switch HP 2524", "underscores"),
        ("Magnifying Glass", "a/magnifying_glass_olivier_01.svg", "Olivier", "Magnifying Glass", "kept"),
        ("", "a/01.svg", "", "red, box", "empty+keywords"),
    ],
)
def test_clean_title_rules(title, path, creator, expected, rule):
    meta = ClipartMetadata(title=title, keywords=("red", "box"), creator=creator)
    assert clean_title(title, path, meta) == (expected, rule)


def test_shared_titles_get_the_file_name():
    shared = frozenset({"Lemon SVG theme", "Dino"})
    meta = ClipartMetadata(title="Lemon SVG theme")
    assert clean_title("Lemon SVG theme", "icons/fileprint.svg", meta, shared) == (
        "fileprint (Lemon SVG theme)",
        "shared_title",
    )
    dino = ClipartMetadata("Dino", creator="Architetto Francesco Rollandin")
    assert clean_title("Dino", "d/dino_architetto_francesc_10.svg", dino, shared) == ("Dino", "shared_title")
    assert readable_stem("tools/magnifying_glass_tom_kra_.svg", "Tom Kralidis") == "magnifying glass"


def test_catalog_metadata_rules_and_render_failures_counted(clipart, tmp_path):
    catalog = load_openclipart(str(clipart))
    by_name = {os.path.basename(i.path): i for i in catalog.items}
    assert len(catalog.items) == 4
    assert by_name["red_box_jane_doe_01.svg"].caption == "Red Box"
    assert by_name["red_box_jane_doe_01.svg"].metadata.keywords == ("red", "box")
    assert by_name["red_box_jane_doe_01.svg"].metadata.creator == "Jane Doe"
    assert (by_name["other_box.svg"].category, by_name["other_box.svg"].subcategory) == ("shapes", "boxes")
    assert by_name["apple_02.svg"].caption == "apple"
    assert catalog.rule_counts == {"boilerplate": 1, "empty": 2, "kept": 1}  # broken.svg: no metadata
    assert [os.path.basename(p) for p, _ in catalog.unreadable_metadata] == ["broken.svg"]

    cache = RenderCache(tmp_path / "cache")
    jobs = [item.job(32) for item in catalog.items]
    results = render_many(jobs, cache)
    failed = [os.path.basename(jobs[r.index].source) for r in results if r.png is None]
    assert failed == ["broken.svg"]
    good = [r for r in results if r.png]
    assert len(good) == 3
    from PIL import Image

    with Image.open(good[0].png) as image:
        assert image.size == (32, 32) and image.mode == "RGB"
        pixels = np.asarray(image)
    assert (pixels[..., 0] > 200).any() and (pixels[..., 1] < 60).any()  # red drawn on white
    # a second pass is served from the cache, failures included (nothing is rendered again)
    import clipforge.collections.render as render_module

    def refuse(job):
        raise AssertionError("rendered again")

    original = render_module.render_job
    render_module.render_job = refuse
    try:
        again = render_many(jobs, cache)
    finally:
        render_module.render_job = original
    assert [r.png for r in again] == [r.png for r in results]
    assert sum(r.png is None for r in again) == 1


def test_render_many_in_worker_processes(clipart, tmp_path):
    jobs = [RenderJob("svg", str(p), 24) for p in sorted(clipart.rglob("*.svg"))]
    results = render_many(jobs, RenderCache(tmp_path / "c"), workers=2)
    assert [r.index for r in results] == list(range(len(jobs)))
    assert sum(r.png is None for r in results) == 1


def test_missing_clipart_names_apt_command(tmp_path):
    with pytest.raises(DatasetNotFound, match="apt-get install -y openclipart-svg"):
        load_eval_dataset("openclipart", str(tmp_path / "none"))
    with pytest.raises(DatasetNotFound, match="fonts-noto-color-emoji"):
        load_eval_dataset("emoji", str(tmp_path / "no-font.ttf"))
    with pytest.raises(FileNotFoundError, match="openclipart-svg"):
        build_source(SourceConfig(kind="openclipart", path=str(tmp_path / "none")))


def test_clipart_source_and_eval_sets(clipart, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    source = build_source(SourceConfig(kind="openclipart", path=str(clipart)))
    assert len(source) == 4
    samples, bad = [], []
    for i in range(len(source)):
        try:
            samples.append(source.read(i))
        except BadSample as exc:
            bad.append(exc.name)
    assert len(samples) == 3 and len(bad) == 1 and bad[0].endswith("broken.svg")
    assert {s.caption for s in samples} == {"Red Box", "other box", "apple"}
    assert all(os.path.isfile(s.image) for s in samples)

    retrieval = load_eval_dataset("openclipart", str(clipart), size=32, cache_dir=str(tmp_path / "rc"))
    assert isinstance(retrieval, RetrievalSet) and len(retrieval) == 4
    classes = load_eval_dataset("openclipart", str(clipart), task="classification", size=32)
    assert isinstance(classes, ClassificationSet) and classes.classnames == ("food", "shapes")
    assert classes.load(classes.labels.index(1)).size == (32, 32)


@needs_font
def test_emoji_render_names_and_groups(tmp_path):
    items = load_emoji()
    grinning = next(i for i in items if i.emoji == "\U0001f600")
    assert grinning.name == "grinning face" and grinning.group == "Smileys & Emotion"
    assert next(i for i in items if i.emoji == "\U0001f1ef\U0001f1f5").name == "flag of Japan"
    assert not any("skin tone" in i.name for i in items)
    assert len(load_emoji(variants=True)) > len(items) + 1000
    cache = RenderCache(tmp_path)
    png = cache.path(grinning.job(48))
    from PIL import Image

    with Image.open(png) as image:
        assert image.size == (48, 48)
        pixels = np.asarray(image.convert("RGB")).astype(int)
    assert (pixels < 200).any(axis=-1).mean() > 0.2  # a yellow face, not a blank square
    assert (pixels[0, 0] == 255).all()  # on white

    groups = load_eval_dataset("emoji", task="classification", size=32, cache_dir=str(tmp_path))
    assert isinstance(groups, ClassificationSet)
    assert groups.classnames[0] == "Smileys & Emotion" and len(groups.classnames) == 9
    source = build_source(SourceConfig(kind="emoji"))
    assert len(source) == len(items)


@needs_clipart
def test_installed_clipart_lists_thousands():
    catalog = load_openclipart()
    assert len(catalog.items) > 5000
    assert len(catalog.categories()) >= 15
    meta = read_metadata(next(i.path for i in catalog.items if i.rule == "kept"))
    assert meta.title


def test_copying_a_tree_keeps_it_usable(clipart, tmp_path):
    # load_openclipart caches per root: a different root is listed afresh
    copy = tmp_path / "copy"
    shutil.copytree(clipart, copy)
    (copy / "food" / "broken.svg").unlink()
    assert len(load_openclipart(str(copy)).items) == 3
