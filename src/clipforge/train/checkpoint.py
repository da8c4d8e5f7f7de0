"""Training checkpoints: atomic writes, keep-last-K, and everything exact resume needs.

A checkpoint holds the model, optimizer, scheduler, RNG states (torch CPU/CUDA, numpy, python) and
the data position (epoch, batches consumed in it), so a run killed mid-epoch and resumed produces
the same losses as an uninterrupted one. Files are written to a temporary name, fsynced and renamed,
so a crash during a write leaves the previous checkpoint intact; they load with
`torch.load(weights_only=True)` (only tensors and plain containers are stored).

Resuming never hides what happened: a damaged newest checkpoint is skipped with a warning naming it
and the one used instead (`ResumePoint.damaged`), and a folder whose checkpoints are all unreadable is
an `UnreadableCheckpointsError` (rerun with --restart to start over), never a silent restart at step 0.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic import atomic_open
from ..weights.formats import CheckpointError

CHECKPOINT_RE = re.compile(r"^step_(\d{9})\.pt$")


@dataclass
class TrainState:
    """Where a run is: optimizer steps done, and the data position of the next batch."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # micro-batches of `epoch` already consumed
    samples_seen: int = 0
    skipped_nan_steps: int = 0
    # Run totals over every rank up to the last checkpoint, so a resumed run keeps counting (and keeps
    # data.max_bad_fraction judged over the whole run) instead of starting from zero.
    good_samples: int = 0
    bad_samples: dict[str, int] = field(default_factory=dict)  # {file or shard name: bad samples met}


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch RNG states as tensors and ints, so a checkpoint restores them exactly."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": _python_state_to_list(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _python_state_to_list(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the RNG states saved by `rng_state`."""
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def atomic_torch_save(obj: Any, path: Path) -> None:
    """`torch.save` to `path` atomically: a crash never leaves a half-written checkpoint."""
    with atomic_open(path) as handle:
        torch.save(obj, handle)


def list_checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoints in `folder`, oldest first (temporary files of interrupted writes are ignored)."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := CHECKPOINT_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def save_checkpoint(
    folder: Path,
    state: TrainState,
    model_state: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any],
    scheduler: Any,
    keep_last: int,
) -> Path:
    """Write a step checkpoint (model, optimizer, scheduler, RNG, data position); keep the newest `keep_last`."""
    path = folder / f"step_{state.step:09d}.pt"
    payload = {
        "format": "clipforge-train-checkpoint",
        "version": 1,
        "state": vars(state).copy(),
        "model": model_state,
        "optimizer": optimizer_state,
        "scheduler": scheduler.state_dict(),
        "rng": rng_state(),
    }
    atomic_torch_save(payload, path)
    for old in list_checkpoints(folder)[:-keep_last]:
        old.unlink(missing_ok=True)
    return path


class DamagedCheckpointError(CheckpointError):
    """A training checkpoint cannot be read (truncated, corrupt, not a clipforge training checkpoint)."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"checkpoint {path} cannot be read ({reason})")
        self.path = path
        self.reason = reason


class UnreadableCheckpointsError(CheckpointError):
    """A run folder holds checkpoints but none of them is readable: resuming is impossible, restarting would
    silently throw the run away, so the user has to choose (`--restart`, or repair/delete the files)."""


_PAYLOAD_KEYS = ("state", "model", "optimizer", "scheduler", "rng")


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint safely (weights_only). A damaged file is a DamagedCheckpointError naming it and why."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling/zip failure means a damaged file
        first = " ".join(str(exc).split()).split(". ")[0][:200]  # torch's zip errors go on for a paragraph
        raise DamagedCheckpointError(path, f"{type(exc).__name__}: {first}") from exc
    if not isinstance(payload, dict) or payload.get("format") != "clipforge-train-checkpoint":
        raise DamagedCheckpointError(path, "not a clipforge training checkpoint")
    missing = [key for key in _PAYLOAD_KEYS if not isinstance(payload.get(key), dict)]
    if missing:
        raise DamagedCheckpointError(path, f"no {', '.join(missing)} in it")
    return payload


class CheckpointMismatchError(CheckpointError):
    """A resume checkpoint holds a different model (other tensors or shapes) than the one being trained."""


def describe_mismatch(expected: dict[str, tuple[int, ...]], stored: dict[str, Any], limit: int = 2) -> str | None:
    """How a checkpoint's model state differs from the model's (keys and shapes), in a few words; None if it fits.

    A user who reuses an output folder for another architecture should read "different model: 12 tensors of
    other shapes, e.g. ...", not torch's list of hundreds of missing and unexpected keys.
    """
    missing = [k for k in expected if k not in stored]
    extra = [k for k in stored if k not in expected]
    reshaped = [k for k in expected if k in stored and tuple(stored[k].shape) != tuple(expected[k])]
    if not (missing or extra or reshaped):
        return None
    parts = []
    if reshaped:
        examples = ", ".join(
            f"{k} {list(stored[k].shape)} there vs {list(expected[k])} here" for k in reshaped[:limit]
        )
        parts.append(f"{len(reshaped)} tensor(s) of other shapes, e.g. {examples}")
    if missing:
        parts.append(f"{len(missing)} of this model's tensors absent, e.g. {', '.join(missing[:limit])}")
    if extra:
        parts.append(f"{len(extra)} tensor(s) this model lacks, e.g. {', '.join(extra[:limit])}")
    return f"{len(stored)} tensors there, {len(expected)} here; " + "; ".join(parts)


def _check_fits(path: Path, payload: dict[str, Any], expected: dict[str, tuple[int, ...]] | None, where: str) -> None:
    if expected is None:
        return
    difference = describe_mismatch(expected, payload.get("model", {}))
    if difference is not None:
        raise CheckpointMismatchError(f"{where} holds a checkpoint of a different model ({path.name}: {difference})")


@dataclass(frozen=True)
class ResumePoint:
    """The checkpoint a run resumes from, and the newer ones skipped because they could not be read.

    Fields:
        path: the checkpoint file used.
        payload: its content (state, model, optimizer, scheduler, rng).
        damaged: (file, reason) of every newer checkpoint that was unreadable, newest first.
    """

    path: Path
    payload: dict[str, Any]
    damaged: tuple[tuple[Path, str], ...] = ()

    def warning(self) -> str | None:
        """One line saying which damaged checkpoints were skipped and which one is used; None if none was."""
        if not self.damaged:
            return None
        skipped = "; ".join(f"{path} ({reason})" for path, reason in self.damaged)
        return f"skipped damaged checkpoint(s) {skipped}; resuming from {self.path} instead"


def find_resume_checkpoint(
    folder: Path, resume: str | None, expected: dict[str, tuple[int, ...]] | None = None
) -> ResumePoint | None:
    """The checkpoint to resume from: `resume="auto"` picks the newest readable checkpoint in `folder`.

    A damaged newer checkpoint is skipped and listed in `ResumePoint.damaged` (the caller warns). If `folder`
    holds checkpoints and none is readable, UnreadableCheckpointsError: restarting at step 0 would silently
    throw the run (and its metrics history) away. With `expected` ({state-dict key: shape} of the model being
    trained), a checkpoint of another model is a CheckpointMismatchError saying so, with what to do, before
    anything is loaded. None: nothing to resume (no checkpoint, or `resume=None`).
    """
    if resume is None:
        return None
    if resume != "auto":
        path = Path(resume)
        if not path.exists():
            raise FileNotFoundError(f"checkpoint.resume={resume!r} does not exist")
        payload = load_checkpoint(path)
        try:
            _check_fits(path, payload, expected, f"checkpoint.resume={resume!r}")
        except CheckpointMismatchError as exc:
            raise CheckpointMismatchError(f"{exc}; resume from a checkpoint of this model") from None
        return ResumePoint(path, payload)
    damaged: list[tuple[Path, str]] = []
    output_dir = folder.parent if folder.name == "checkpoints" else folder
    for path in reversed(list_checkpoints(folder)):
        try:
            payload = load_checkpoint(path)
        except DamagedCheckpointError as exc:
            damaged.append((path, exc.reason))  # e.g. a disk error or a copy cut short: try the one before
            continue
        try:
            _check_fits(path, payload, expected, str(output_dir))
        except CheckpointMismatchError as exc:
            raise CheckpointMismatchError(f"{exc}; use a new --output_dir or delete {output_dir}") from None
        return ResumePoint(path, payload, tuple(damaged))
    if damaged:
        names = "; ".join(f"{path.name} ({reason})" for path, reason in damaged)
        raise UnreadableCheckpointsError(
            f"{folder} holds {len(damaged)} checkpoint(s) and none is readable: {names}; nothing can be resumed. "
            f"Rerun with --restart to start over from step 0 (the old metrics.jsonl and checkpoints are kept "
            f"beside the new ones with a .N suffix), or use another --output_dir"
        )
    return None
