"""Run a matrix of evaluations (models x datasets x tasks) and write the report.

Used by `clipforge eval` and callable from Python (and from training) with the same names:

    records = run_evaluations({"mine": model}, [EvalRequest("zeroshot", "fashion_mnist")], out_dir="report")
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from ..models.clip import CLIP
from .report import write_plots, write_results
from .tasks import EvalContext, EvalRequest, run_task


def _stem(*parts: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", "_".join(parts)).strip("-")


def run_evaluations(
    models: dict[str, CLIP],
    requests: list[EvalRequest],
    out_dir: str | Path | None = None,
    *,
    cache_dir: str | Path | None = None,
    batch_size: int = 256,
    num_workers: int = 0,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    plots: bool = True,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Every request for every model; results (and plots) written under `out_dir` when given."""
    records: list[dict[str, Any]] = []
    for name, model in models.items():
        ctx = EvalContext(name, cache_dir, batch_size, num_workers, device, dtype, progress)
        for request in requests:
            result = run_task(model, request, ctx)
            records.extend(result.records)
            if out_dir is not None and plots:
                stem = _stem(name, request.dataset, request.split, request.task)
                write_plots(result.artifacts, stem, Path(out_dir) / "plots")
    if out_dir is not None:
        write_results(records, Path(out_dir))
    return records
