"""Shared matplotlib plumbing: an off-screen figure and an atomic PNG write.

matplotlib is optional (`pip install clipforge[plots]`) and imported only when a plot is drawn; the
Agg canvas is used directly so no global backend state (pyplot) is touched.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def new_figure(width: float, height: float, dpi: int = 100):
    """A matplotlib Figure on an Agg canvas; a clear ImportError when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401  (imported first so a missing package fails here, not mid-plot)
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError("plots need matplotlib, an optional dependency: pip install clipforge[plots]") from exc
    fig = Figure(figsize=(width, height), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, out_png: Path) -> Path:
    """Write `fig` as PNG through a temporary file and an atomic rename (no half-written images)."""
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out_png.name}.", suffix=".tmp", dir=out_png.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            fig.savefig(handle, format="png")
        os.replace(tmp_name, out_png)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return out_png
