"""Training curves from the trainer's `metrics.jsonl`: loss, learning rate and every eval metric vs step.

The JSONL is the run's one durable record (see `train.monitor`), so the figure is drawn from it
alone and can be redrawn at any time, including while the run still appends to it: a line cut mid-
write, or any other line that is not a JSON object with a numeric "step", is skipped and counted
in the figure's title rather than failing the plot. Values the monitor wrote as null (non-finite
losses) are gaps, not errors.

matplotlib is an optional dependency (`pip install clipforge[plots]`), imported only when a plot is
drawn, and used through its object-oriented Agg canvas so no global pyplot state or backend is touched.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ..plotting import new_figure, save_figure

_TRAIN_KEYS = ("loss", "lr", "logit_scale")  # drawn when present, in this order, before the eval metrics
_EVAL_PREFIX = "eval/"


def read_metrics_jsonl(path: Path) -> tuple[list[dict[str, Any]], int]:
    """(records, malformed): every JSON object with a numeric "step", and how many lines were not one.

    Blank lines are neither records nor malformed.
    """
    records, malformed = [], 0
    with Path(path).open(encoding="utf-8", errors="replace") as handle:
        for line in handle:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                malformed += 1
                continue
            if not isinstance(record, dict) or not _is_number(record.get("step")):
                malformed += 1
                continue
            records.append(record)
    return records, malformed


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _series(records: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    points = sorted((float(r["step"]), float(r[key])) for r in records if _is_number(r.get(key)))
    return [s for s, _ in points], [v for _, v in points]


def plot_training_curves(metrics_jsonl: Path, out_png: Path) -> Path:
    """Draw loss (log scale when all positive), lr, logit_scale and each "eval/..." metric vs step.

    One subplot per series present in the file; written to `out_png` atomically (a temporary file in
    the same folder, then `os.replace`), so a reader never sees a half-written image. Returns `out_png`.
    """
    metrics_jsonl, out_png = Path(metrics_jsonl), Path(out_png)
    records, malformed = read_metrics_jsonl(metrics_jsonl)

    eval_keys = sorted({k for r in records for k in r if k.startswith(_EVAL_PREFIX) and _is_number(r[k])})
    panels = [(key, *_series(records, key)) for key in (*_TRAIN_KEYS, *eval_keys)]
    panels = [(key, steps, values) for key, steps, values in panels if steps]

    cols = min(3, max(1, len(panels)))
    rows = max(1, math.ceil(len(panels) / cols))
    fig = new_figure(4.5 * cols, 3.2 * rows)
    title = f"{metrics_jsonl.name}: {len(records)} records"
    if malformed:
        title += f", {malformed} malformed line{'s' if malformed != 1 else ''} skipped"
    fig.suptitle(title)
    if not panels:
        ax = fig.add_subplot(1, 1, 1)
        ax.text(0.5, 0.5, "no metrics to plot", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
    for i, (key, steps, values) in enumerate(panels):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.plot(steps, values, marker="o" if key.startswith(_EVAL_PREFIX) or len(steps) == 1 else None, lw=1.2)
        if key == "loss" and min(values) > 0:
            ax.set_yscale("log")  # contrastive losses fall over orders of magnitude early on
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)

    return save_figure(fig, out_png)
