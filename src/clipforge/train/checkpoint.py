"""Training checkpoints: atomic writes, keep-last-K, and everything exact resume needs.

A checkpoint holds the model, optimizer, scheduler, RNG states (torch CPU/CUDA, numpy, python) and
the data position (epoch, batches consumed in it), so a run killed mid-epoch and resumed produces
the same losses as an uninterrupted one. Files are written to a temporary name, fsynced and renamed,
so a crash during a write leaves the previous checkpoint intact; they load with
`torch.load(weights_only=True)` (only tensors and plain containers are stored).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
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


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint safely (weights_only). A damaged file is a clear error naming it."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling/zip failure means a damaged file
        raise RuntimeError(
            f"checkpoint {path} cannot be read ({type(exc).__name__}: {exc}); delete it to resume from the previous one"
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != "clipforge-train-checkpoint":
        raise RuntimeError(f"{path} is not a clipforge training checkpoint")
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


def find_resume_checkpoint(
    folder: Path, resume: str | None, expected: dict[str, tuple[int, ...]] | None = None
) -> tuple[Path, dict[str, Any]] | None:
    """(path, payload) to resume from: `resume="auto"` picks the newest readable checkpoint in `folder`.

    With `expected` ({state-dict key: shape} of the model being trained), a checkpoint of another model
    is a CheckpointMismatchError saying so, with what to do, before anything is loaded.
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
        return path, payload
    for path in reversed(list_checkpoints(folder)):
        try:
            payload = load_checkpoint(path)
        except RuntimeError:
            continue  # a damaged newest file (crash mid-write of a non-atomic copy): use the one before
        output_dir = folder.parent if folder.name == "checkpoints" else folder
        try:
            _check_fits(path, payload, expected, str(output_dir))
        except CheckpointMismatchError as exc:
            raise CheckpointMismatchError(f"{exc}; use a new --output_dir or delete {output_dir}") from None
        return path, payload
    return None
