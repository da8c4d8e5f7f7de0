"""scripts/search_demo.py: every stage of the search demo on 40 emoji and 8 training steps (its --smoke)."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from clipforge.collections.emoji import EMOJI_FONT

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "search_demo.py"

pytestmark = pytest.mark.skipif(not Path(EMOJI_FONT).is_file(), reason="fonts-noto-color-emoji is not installed")


def _demo():
    spec = importlib.util.spec_from_file_location("search_demo", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_recall_counts_the_rank_of_each_texts_own_image():
    demo = _demo()
    images = np.eye(4, dtype=np.float32)  # (4, 4)
    texts = np.array(
        [
            [1.0, 0.0, 0.0, 0.0],  # its image first
            [0.0, 0.6, 0.8, 0.0],  # 2nd
            [0.0, 0.0, 0.0, 1.0],  # 2nd: image 3 above it, the others tie with it (ties count in its favour)
            [0.5, 0.5, 0.5, 0.4],  # 4th
        ],
        dtype=np.float32,
    )
    assert demo.recall_at(texts, images, ks=(1, 2, 4)) == {"R@1": 0.25, "R@2": 0.75, "R@4": 1.0}
    assert demo.recall_at(texts.T.copy(), images, ks=(1, 2, 4)) != demo.recall_at(texts, images, ks=(1, 2, 4))


def test_the_smoke_demo_exports_trains_indexes_searches_and_reuses_its_outputs(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the render cache stays in the test's folder
    demo = _demo()
    out = tmp_path / "demo"
    assert demo.main(["--smoke", "--out", str(out)]) == 0
    printed = capsys.readouterr().out

    rows = list(csv.DictReader((out / "emoji" / "captions.csv").open(encoding="utf-8")))
    assert len(rows) == demo.SMOKE_LIMIT and all((out / "emoji" / r["image_path"]).is_file() for r in rows)
    assert (out / "train" / "model" / "clipforge_model.safetensors").is_file()
    assert (out / "emoji.index" / "info.json").is_file()
    for query, _ in demo.TEXT_QUERIES:
        assert f"$ clipforge search {out / 'emoji.index'} '{query}' -k 5" in printed
    summary = json.loads((out / "summary.json").read_text())
    example = str(out / "emoji" / rows[0]["image_path"])  # "grinning cat" is not among the first 40
    assert summary["ranks"][example] == 1  # a query by example finds its own embedding first
    recall = summary["recall"]
    assert recall["n"] == demo.SMOKE_LIMIT and 0.0 <= recall["R@1"] <= recall["R@5"] <= recall["R@10"] <= 1.0
    assert f"clipforge serve {out / 'emoji.index'} --port 1234" in printed

    assert demo.main(["--smoke", "--out", str(out)]) == 0  # a rerun reuses the export, the model and the index
    again = capsys.readouterr().out
    assert "reusing the trained model" in again and "$ clipforge train" not in again
    assert "0 rendered now, 40 kept" in again
