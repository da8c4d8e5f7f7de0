"""Watching a run: JSONL metrics, a progress bar, and optional TensorBoard / Weights & Biases.

Only rank 0 writes. `metrics.jsonl` gets one JSON object per log step (and per evaluation), always
appended; what happens to an earlier run's file on resume or restart is train/history.py's job.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from .config import LogConfig


class Monitor:
    """Progress bar + metric sinks for one run (rank 0 only; other ranks get a silent instance)."""

    def __init__(
        self,
        cfg: LogConfig,
        output_dir: Path,
        total_steps: int,
        start_step: int,
        enabled: bool,
        run_config: dict[str, Any],
    ) -> None:
        self.cfg = cfg
        self.enabled = enabled
        self.jsonl = output_dir / "metrics.jsonl"
        self.bar = None
        self.tb = None
        self.wandb = None
        self._last_time = time.perf_counter()
        self._last_samples = 0
        if not enabled:
            return
        if cfg.progress:
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True)
        if cfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:
                raise ImportError(
                    "logging.tensorboard=true needs the tensorboard package: pip install tensorboard"
                ) from exc
            self.tb = SummaryWriter(str(output_dir / "tensorboard"))
        if cfg.wandb:
            try:
                import wandb
            except ImportError as exc:
                raise ImportError("logging.wandb needs the wandb package: pip install wandb") from exc
            self.wandb = wandb.init(project=cfg.wandb, dir=str(output_dir), config=run_config, resume="allow")

    def rate(self, samples_seen: int) -> float:
        """Samples per second since the previous call."""
        now = time.perf_counter()
        elapsed = max(now - self._last_time, 1e-9)
        rate = (samples_seen - self._last_samples) / elapsed
        self._last_time, self._last_samples = now, samples_seen
        return rate

    def reset_rate(self, samples_seen: int) -> None:
        """Restart the rate clock (after evaluation or checkpointing, which are not training time)."""
        self._last_time, self._last_samples = time.perf_counter(), samples_seen

    def log(self, record: dict[str, Any]) -> None:
        """Append a record to metrics.jsonl (non-finite values as null) and to TensorBoard / W&B when on."""
        if not self.enabled:
            return
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        with self.jsonl.open("a") as handle:
            handle.write(json.dumps(clean) + "\n")
        step = record.get("step", 0)
        numeric = {k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"}
        if self.tb is not None:
            for key, value in numeric.items():
                self.tb.add_scalar(key, value, step)
        if self.wandb is not None:
            self.wandb.log(numeric, step=step)

    def advance(self, steps: int, postfix: dict[str, Any] | None = None) -> None:
        """Move the progress bar `steps` forward and update its postfix (loss, lr, samples/s)."""
        if self.bar is not None:
            self.bar.update(steps)
            if postfix:
                self.bar.set_postfix(postfix, refresh=False)

    def write(self, message: str) -> None:
        """Print a message without breaking the progress bar (rank 0 only)."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(message)
        else:
            print(message, flush=True)

    def close(self) -> None:
        """Close the progress bar and the TensorBoard / W&B sinks."""
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
