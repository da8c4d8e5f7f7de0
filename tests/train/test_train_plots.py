"""Training-curve plots from a metrics JSONL: a valid PNG, malformed lines skipped and counted."""

import json
import sys

import pytest

from clipforge.train.plots import plot_training_curves, read_metrics_jsonl

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _write_run(path, extra_lines=()):
    lines = []
    for step in range(0, 200, 10):
        record = {"step": step, "loss": 5.0 / (1 + step), "lr": 1e-3 * min(1.0, step / 50), "samples_per_s": 900.0}
        record["logit_scale"] = 14.3 + step / 100
        lines.append(json.dumps(record))
        if step % 50 == 0:
            lines.append(
                json.dumps({"step": step, "eval/imagenet/top1": step / 400, "eval/coco/image_to_text_R@1": 0.1})
            )
    lines.append(json.dumps({"step": 200, "loss": None, "lr": 0.0}))  # the monitor writes non-finite values as null
    path.write_text("\n".join([*lines, *extra_lines]) + "\n")


def test_plot_is_a_png_and_malformed_lines_are_counted(tmp_path):
    jsonl = tmp_path / "metrics.jsonl"
    _write_run(jsonl, extra_lines=["", "{not json", "[1, 2]", json.dumps({"loss": 1.0}), '{"step": 3, "loss": 0.'])
    records, malformed = read_metrics_jsonl(jsonl)
    assert malformed == 4  # the blank line is neither a record nor malformed
    assert len(records) == 20 + 4 + 1

    out = plot_training_curves(jsonl, tmp_path / "plots" / "curves.png")
    assert out == tmp_path / "plots" / "curves.png"
    data = out.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 10_000
    assert [p.name for p in out.parent.iterdir()] == ["curves.png"]  # no temporary file left behind

    # Overwriting an existing plot works (os.replace) and an empty or fully broken file still draws.
    broken = tmp_path / "broken.jsonl"
    broken.write_text("garbage\n\n")
    assert plot_training_curves(broken, out).read_bytes()[:8] == PNG_MAGIC


def test_missing_matplotlib_gives_an_install_hint(tmp_path, monkeypatch):
    jsonl = tmp_path / "metrics.jsonl"
    _write_run(jsonl)
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"pip install clipforge\[plots\]"):
        plot_training_curves(jsonl, tmp_path / "curves.png")
    assert not (tmp_path / "curves.png").exists()
