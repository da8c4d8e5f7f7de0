"""Shared matplotlib plumbing: an off-screen figure and an atomic PNG write.

matplotlib is optional (`pip install clipforge[plots]`) and imported only when a plot is drawn; the
Agg canvas is used directly so no global backend state (pyplot) is touched.
"""

from __future__ import annotations

from pathlib import Path

from .atomic import atomic_open


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
    """Write `fig` as PNG atomically (no half-written images)."""
    with atomic_open(out_png) as handle:
        fig.savefig(handle, format="png")
    return Path(out_png)
