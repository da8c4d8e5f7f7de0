"""A run folder's history across reruns: set it aside on a restart, keep metrics.jsonl whole on resume.

Rerunning `clipforge train` into a folder continues the run there; nothing it logged is thrown away:

- Resume at step S: metrics.jsonl keeps every record up to step S and new records are appended. Records
  of steps after S (logged before the kill, for work the resume redoes bit-identically) are dropped,
  only when there are any, by an atomic rewrite, and the count is reported; so the file of a killed and
  resumed run reads like the one of an uninterrupted run, one record per step.
- A fresh start (nothing to resume) in a folder that holds an earlier run's metrics or checkpoints, and
  every `--restart`: that run's outputs are moved aside with one common `.N` suffix (metrics.jsonl.1,
  checkpoints.1, ...), never truncated or deleted.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..atomic import atomic_write_bytes
from .checkpoint import list_checkpoints

METRICS = "metrics.jsonl"
RUN_OUTPUTS = (METRICS, "checkpoints", "summary.json", "model", "config.json")


def has_history(output_dir: Path) -> bool:
    """Whether `output_dir` holds an earlier run's logged records or checkpoints."""
    metrics = output_dir / METRICS
    has_metrics = metrics.is_file() and metrics.stat().st_size > 0
    return has_metrics or bool(list_checkpoints(output_dir / "checkpoints"))


def set_aside(output_dir: Path) -> list[tuple[Path, Path]]:
    """Rename the earlier run's outputs in `output_dir` to NAME.N (the first N free for all of them).

    Returns (old, new) paths of what was moved; nothing is deleted.
    """
    present = [name for name in RUN_OUTPUTS if (output_dir / name).exists()]
    if not present:
        return []
    n = 1
    while any((output_dir / f"{name}.{n}").exists() for name in RUN_OUTPUTS):
        n += 1
    moved = []
    for name in present:
        source, target = output_dir / name, output_dir / f"{name}.{n}"
        os.replace(source, target)
        moved.append((source, target))
    return moved


def drop_records_after(path: Path, step: int) -> tuple[int, int]:
    """Drop metrics.jsonl records of steps after `step` and lines cut by a crash; (records, cut lines) dropped.

    The file is rewritten (atomically) only when something is dropped: appending after a cut line would
    glue the next record to it.
    """
    if not path.exists():
        return 0, 0
    kept, dropped, cut = [], 0, 0
    for line in path.read_bytes().decode("utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            cut += 1
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] > step:
            dropped += 1
            continue
        kept.append(line)
    if dropped or cut:
        atomic_write_bytes(path, "".join(line + "\n" for line in kept).encode("utf-8"))
    return dropped, cut


def describe_moves(moved: list[tuple[Path, Path]]) -> str:
    """`metrics.jsonl -> metrics.jsonl.1, checkpoints -> checkpoints.1` for a message."""
    return ", ".join(f"{old.name} -> {new.name}" for old, new in moved)
