"""The training loop: from one CPU process to many GPU processes under torchrun.

    train(config)  ->  TrainResult

One function drives a run: build the model (optionally from a checkpoint, with towers locked),
wrap it for DDP when there are several ranks, stream batches from `TrainData`, step with gradient
accumulation (train/step.py), clip, schedule, clamp the temperature, log, evaluate, checkpoint
atomically every N steps and on SIGTERM/SIGINT, and resume exactly (model, optimizer, scheduler,
RNG and data position) from the newest checkpoint. Derived run state lives in `RunContext`; the
config is never written to.

Rank 0 holds the output folder's lock (clipforge.locking) for the whole run, so a second run into the
same folder stops at once with a clear error. Resuming says what it did: damaged checkpoints skipped,
records of redone steps dropped; an earlier run's history is moved aside, never truncated (history.py).
Under FSDP every rank runs the evaluation: the sharded towers' forward all-gathers their parameters.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as torch_dist
import torch.nn.functional as F
from torch import nn

from ..atomic import atomic_write_bytes, remove_stale_temporaries
from ..data import DataError, TrainData
from ..factory import get_preprocess, get_tokenizer
from ..jsonio import json_text
from ..locking import FolderInUseError, output_lock
from ..models.clip import CLIP
from ..models.layers import PatchDropout
from ..weights.loading import create_model, load_model, save_model
from .checkpoint import TrainState, find_resume_checkpoint, save_checkpoint, set_rng_state
from .classifier import lock_for_classifier, prepare_head, resolve_head_spec
from .config import PhaseConfig, TrainConfig
from .distributed import (
    DistInfo,
    all_reduce_mean,
    barrier,
    broadcast_object,
    cleanup_distributed,
    init_distributed,
)
from .evaluation import PeriodicEvaluator
from .freeze import lock_image_tower, lock_text_tower
from .history import METRICS, describe_moves, drop_records_after, has_history, set_aside
from .losses import clamp_logit_scale_
from .monitor import Monitor
from .optim import build_optimizer, build_scheduler
from .sharding import (
    full_model_state,
    full_optimizer_state,
    load_full_states,
    sync_replicated_grads,
    uses_fsdp,
    wrap_model,
)
from .step import run_classifier_step, run_step

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """The run cannot go on (non-finite loss with nan_policy='stop', too many bad samples, ...)."""


@dataclass
class RunContext:
    """Derived, per-process run state (STYLE.md rule 6): never part of the config."""

    dist: DistInfo
    output_dir: Path
    checkpoint_dir: Path
    monitor: Monitor


@dataclass
class TrainResult:
    """What a run ended with: its state, where the model was saved, final metrics, bad samples, interruption.

    Every rank gets one; only the one with `is_main` (rank 0) wrote the model and reports the run.
    `bad_samples` are the run's totals over every rank (and over earlier runs this one resumed).
    """

    state: TrainState
    output_dir: Path
    model_dir: Path | None
    interrupted: bool
    final_metrics: dict[str, float] = field(default_factory=dict)
    bad_samples: dict[str, int] = field(default_factory=dict)
    stop_signal: int | None = None  # the signal that interrupted the run (SIGINT: the CLI exits 130, SIGTERM 143)
    is_main: bool = True


class StopSignal:
    """Turns SIGTERM/SIGINT into a flag the loop checks after each step (checkpoint, then exit).

    A second Ctrl-C does not wait for the step to end: it raises KeyboardInterrupt (the CLI exits 130).
    """

    def __init__(self) -> None:
        self.requested = False
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignal:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: signals cannot be caught here
                pass
        return self

    def _handle(self, signum, frame) -> None:  # noqa: ARG002 - signal handler signature
        if self.requested and signum == signal.SIGINT:  # a second Ctrl-C: stop now (checkpoints are atomic)
            raise KeyboardInterrupt
        self.requested = True
        self.signum = signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's RNGs from one number."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_model(cfg: TrainConfig) -> CLIP:
    """The model a TrainConfig describes: architecture, initial weights, locked towers, checkpointing."""
    spec = cfg.model
    model = create_model(spec.name, pretrained=spec.pretrained, **spec.overrides)
    if spec.lock_image:
        lock_image_tower(model, spec.lock_image_unlocked_groups)
    if spec.lock_text:
        lock_text_tower(model, spec.lock_text_unlocked_layers)
    if cfg.loss.kind == "classifier":  # fine-tuning against the fixed zero-shot head: the image tower alone learns
        lock_for_classifier(model)
    if spec.grad_checkpointing:
        model.set_grad_checkpointing(True)
    return model


def _autocast_factory(precision: str, device: torch.device):
    if precision == "bf16":
        return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def phase_at(phases: tuple[PhaseConfig, ...], step: int, total_steps: int) -> PhaseConfig | None:
    """The training phase (CLIPA-style reduced sizes) that covers `step`, or None when no phases are set."""
    if not phases:
        return None
    edge = 0.0
    for phase in phases:
        edge += phase.fraction * total_steps
        if step < round(edge):
            return phase
    return phases[-1]


def apply_phase(
    phase: PhaseConfig | None, model: CLIP, images: torch.Tensor, tokens: torch.Tensor | None, eot: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Reduce image size / text length for a CLIPA phase (Li et al. 2023); set its patch dropout.

    `tokens` None (classifier fine-tuning, where no text is run) leaves the text length alone.
    """
    if phase is None:
        return images, tokens
    resized = phase.image_size is not None and phase.image_size != model.image_size
    model.set_position_interpolation(resized)  # explicit: the model refuses other sizes otherwise
    if phase.image_size is not None and phase.image_size != images.shape[-1]:
        images = F.interpolate(images, size=(phase.image_size,) * 2, mode="bilinear", antialias=True)
    if tokens is not None and phase.context_length is not None and phase.context_length < tokens.shape[1]:
        cut = tokens[:, : phase.context_length].clone()
        truncated = (tokens[:, phase.context_length :] != 0).any(dim=1)
        cut[truncated, -1] = eot  # keep an end token on rows that lost theirs
        tokens = cut
    if phase.patch_dropout is not None:
        # keep the class token only where there is one (SigLIP has none): rope keep indices count from the patches
        exclude_first = getattr(model.visual, "num_prefix", 1) == 1
        model.visual.patch_dropout = (
            PatchDropout(phase.patch_dropout, exclude_first_token=exclude_first) if phase.patch_dropout > 0
            else nn.Identity()
        )
    return images, tokens


def _load_teacher(source: str, device: torch.device) -> CLIP:
    if ":" in source and not Path(source).exists():
        name, tag = source.rsplit(":", 1)
        teacher = create_model(name, pretrained=tag)
    else:
        teacher = load_model(source)
    teacher.requires_grad_(False)
    return teacher.to(device).eval()


def _write_config(cfg: TrainConfig, output_dir: Path) -> None:
    text = json.dumps(cfg.to_dict(), indent=2, default=str) + "\n"
    atomic_write_bytes(output_dir / "config.json", text.encode())


def train(cfg: TrainConfig, *, stop_after_steps: int | None = None) -> TrainResult:
    """Run (or resume) training as configured. `stop_after_steps` stops early as a kill would
    (checkpoint, then return with interrupted=True); tests use it to emulate pre-emption."""
    dist = init_distributed(cfg.device)
    try:
        with _locked_output(Path(cfg.output_dir), dist):
            result = _train(cfg, dist, stop_after_steps)
    except BaseException:
        cleanup_distributed(wait=False)
        raise
    cleanup_distributed()
    return result


@contextlib.contextmanager
def _locked_output(output_dir: Path, dist: DistInfo):
    """Rank 0 holds OUTPUT_DIR/.lock for the run; if another job holds it, every rank raises FolderInUseError."""
    with contextlib.ExitStack() as stack:
        refusal = None
        if dist.is_main:
            try:
                stack.enter_context(output_lock(output_dir, what="clipforge train"))
                for folder in (output_dir, output_dir / "checkpoints", output_dir / "model"):
                    remove_stale_temporaries(folder)  # a killed run's half-written files; ours cannot be running
            except FolderInUseError as exc:
                refusal = (exc.folder, exc.holder, exc.hint)
        refusal = broadcast_object(refusal, dist)  # the other ranks stop with the same message, not in a hang
        if refusal is not None:
            raise FolderInUseError(*refusal)
        yield


def _prepare_history(cfg: TrainConfig, output_dir: Path, checkpoint_dir: Path, dist: DistInfo, shapes):
    """Set an earlier run aside on restart, find the checkpoint to resume from, keep metrics.jsonl whole.

    Rank 0 moves files; every rank then reads the same checkpoint. Returns the ResumePoint or None.
    """
    if cfg.checkpoint.restart:
        moved = set_aside(output_dir) if dist.is_main else []
        if moved:
            print(f"restart: the earlier run is kept as {describe_moves(moved)}", flush=True)
        barrier(dist)
    found = find_resume_checkpoint(checkpoint_dir, cfg.checkpoint.resume, expected=shapes)
    if not dist.is_main:
        return found
    if found is not None:
        if (warning := found.warning()) is not None:
            log.warning("%s", warning)
        step = int(found.payload["state"].get("step", 0))
        dropped, cut = drop_records_after(output_dir / METRICS, step)
        if dropped or cut:
            log.warning(
                "%s: dropped %d record(s) of steps after %d (this resume redoes them)%s",
                output_dir / METRICS,
                dropped,
                step,
                f" and {cut} line(s) cut by the interruption" if cut else "",
            )
    elif has_history(output_dir):  # starting over in a folder with an earlier run: keep its history
        moved = set_aside(output_dir)
        log.warning(
            "%s holds an earlier run with no checkpoint to resume from; starting at step 0 and keeping it as %s",
            output_dir,
            describe_moves(moved),
        )
    return found


def _merge_bad_counts(state: TrainState, new: dict[str, int], good: int, dist: DistInfo) -> None:
    """Add every rank's bad/good sample counts since the last merge to the run totals in `state` (a collective)."""
    parts = [(good, new)]
    if dist.world_size > 1:
        parts = [None] * dist.world_size
        torch_dist.all_gather_object(parts, (good, dict(new)))
    for rank_good, rank_bad in parts:
        state.good_samples += rank_good
        for name, count in rank_bad.items():
            state.bad_samples[name] = state.bad_samples.get(name, 0) + count
    new.clear()


def _train(cfg: TrainConfig, dist: DistInfo, stop_after_steps: int | None) -> TrainResult:
    output_dir = Path(cfg.output_dir)
    checkpoint_dir = output_dir / "checkpoints"
    if dist.is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
    device = dist.device
    spec = resolve_head_spec(cfg) if cfg.loss.kind == "classifier" else None  # its config checks, before any work
    seed_everything(cfg.seed)  # the same initial weights on every rank (FSDP2 does not broadcast them)
    model = build_model(cfg)
    seed_everything(cfg.seed + dist.rank)  # per-rank randomness from here on (patch dropout, ...)
    if cfg.precision == "pure_bf16":
        model = model.to(torch.bfloat16)
    model = model.to(device).train()
    teacher = _load_teacher(cfg.model.teacher, device) if cfg.model.teacher else None
    if teacher is not None and any(p.image_size is not None for p in cfg.phases):
        teacher.set_position_interpolation(True)  # it embeds the same reduced-size batches
    tokenizer = get_tokenizer(model)
    data = TrainData(cfg.data, get_preprocess(model, train=True), tokenizer, dist.rank, dist.world_size)
    accum = cfg.schedule.accum_steps
    steps_per_epoch = data.batches_per_epoch() // accum
    if steps_per_epoch < 1:
        raise TrainingError(
            f"one optimizer step needs {accum} batches of {cfg.data.batch_size} per rank, but an epoch has only "
            f"{data.batches_per_epoch()}: lower data.batch_size or schedule.accum_steps"
        )
    total_steps = cfg.schedule.epochs * steps_per_epoch
    if cfg.schedule.max_steps is not None:
        total_steps = min(total_steps, cfg.schedule.max_steps)

    wrapped, no_sync = wrap_model(model, cfg.strategy, dist)  # before the optimizer: FSDP2 swaps parameters
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, total_steps, cfg.schedule)
    state = TrainState()
    shapes = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    found = _prepare_history(cfg, output_dir, checkpoint_dir, dist, shapes)
    if found is not None:
        payload = found.payload
        load_full_states(model, optimizer, payload, cfg.strategy, dist)
        scheduler.load_state_dict(payload["scheduler"])
        set_rng_state(payload["rng"])
        state = TrainState(**payload["state"])
        # The data layer's max_bad_fraction check goes on from the run's totals, not from zero.
        data.tally.good = state.good_samples
        data.tally.bad.update(state.bad_samples)
    head = None
    if spec is not None:  # the zero-shot head of the initial model (stored), or the run's stored head
        head = prepare_head(
            model, tokenizer, spec, checkpoint_dir, found is not None, dist.is_main, lambda: barrier(dist)
        )
        head_weights = head.weights.to(device)  # (C, D), fixed
    if dist.is_main:  # only once the folder is known to hold this model's run (or none): never clobber another's
        _write_config(cfg, output_dir)
    if cfg.model.compile:
        wrapped = torch.compile(wrapped)

    monitor = Monitor(cfg.logging, output_dir, total_steps, state.step, dist.is_main, cfg.to_dict())
    ctx = RunContext(dist, output_dir, checkpoint_dir, monitor)
    if found is not None:
        monitor.write(
            f"resumed from {found.path} at step {state.step} (epoch {state.epoch}, batch {state.batch_in_epoch})"
        )

    autocast = _autocast_factory(cfg.precision, device)
    global_batch = cfg.data.batch_size * accum * dist.world_size
    bad_new: dict[str, int] = {}  # this rank's bad samples since the last merge into state.bad_samples
    good_new = [0]
    interrupted = False
    final_metrics: dict[str, float] = {}

    def merge_counts() -> None:
        _merge_bad_counts(state, bad_new, good_new[0], dist)
        good_new[0] = 0

    def checkpoint() -> None:
        merge_counts()  # collective: the checkpoint holds every rank's counts
        model_state = full_model_state(model, cfg.strategy, dist)  # collective under FSDP
        optim_state = full_optimizer_state(model, optimizer, cfg.strategy, dist)
        if dist.is_main:
            save_checkpoint(checkpoint_dir, state, model_state, optim_state, scheduler, cfg.checkpoint.keep_last)
        barrier(dist)

    eval_dtype = torch.bfloat16 if cfg.precision != "fp32" else None
    evaluator = PeriodicEvaluator(cfg.eval, model, tokenizer, device, eval_dtype)

    # FSDP2's forward all-gathers each sharded tower's parameters: a forward on rank 0 alone waits forever
    # for the other ranks, so under FSDP every rank evaluates (the same data, so the same collectives).
    evaluate_here = dist.is_main or uses_fsdp(cfg.strategy, dist)

    def evaluate() -> dict[str, float]:
        metrics = evaluator() if (evaluate_here and evaluator.enabled) else {}
        barrier(dist)
        if metrics and dist.is_main:
            monitor.log({"step": state.step, **{f"eval/{k}": v for k, v in metrics.items()}})
            monitor.write(f"step {state.step}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        return metrics

    monitor.reset_rate(state.samples_seen)
    with StopSignal() as stop:
        while state.step < total_steps and not interrupted:
            micro: list[tuple[torch.Tensor, torch.Tensor]] = []
            try:
                for batch in data.epoch(state.epoch, start_batch=state.batch_in_epoch):
                    for name, count in batch.bad.items():
                        bad_new[name] = bad_new.get(name, 0) + count
                    good_new[0] += len(batch)
                    # classifier: each caption's class label (B,) instead of its tokens, read before any phase cuts them
                    second = batch.tokens if head is None else head.labels_for(batch.tokens)
                    micro.append((batch.images.to(device, non_blocking=True), second.to(device)))
                    if len(micro) < accum:
                        continue
                    phase = phase_at(cfg.phases, state.step, total_steps)
                    if head is None:
                        micro = [apply_phase(phase, model, i, t, tokenizer.eot_token_id) for i, t in micro]
                    else:
                        micro = [(apply_phase(phase, model, i, None, tokenizer.eot_token_id)[0], y) for i, y in micro]
                    if cfg.precision == "pure_bf16":
                        micro = [(i.to(torch.bfloat16), t) for i, t in micro]
                    optimizer.zero_grad(set_to_none=True)
                    if head is None:
                        result = run_step(wrapped, micro, cfg.loss, dist, autocast, teacher, no_sync)
                    else:
                        result = run_classifier_step(wrapped, micro, head_weights, autocast, no_sync)
                    state.batch_in_epoch += len(micro)
                    micro = []
                    if result.finite:
                        sync_replicated_grads(model, cfg.strategy, dist)
                        grad_norm = _clip_gradients(model, cfg.optim.grad_clip)
                        optimizer.step()
                    elif cfg.nan_policy == "stop":
                        raise TrainingError(
                            f"non-finite loss ({result.loss}) at step {state.step}; the last checkpoint in "
                            f"{checkpoint_dir} is intact. Lower optim.lr, use precision=fp32, or set nan_policy=skip"
                        )
                    else:
                        state.skipped_nan_steps += 1
                        grad_norm = float("nan")
                        monitor.write(f"step {state.step}: non-finite loss, step skipped ({state.skipped_nan_steps})")
                    scheduler.step()
                    if head is None:  # the classifier's temperature is locked: never touched, not even clamped
                        clamp_logit_scale_(model.logit_scale, math.log(cfg.loss.max_logit_scale))
                    state.step += 1
                    state.samples_seen += global_batch
                    _log_step(ctx, cfg, state, result.loss, optimizer, model, grad_norm, bad_new, total_steps)
                    if cfg.eval.every_steps and state.step % cfg.eval.every_steps == 0 and state.step < total_steps:
                        evaluate()
                    due = cfg.checkpoint.every_steps and state.step % cfg.checkpoint.every_steps == 0
                    stopping = stop.requested or (stop_after_steps is not None and state.step >= stop_after_steps)
                    if due or stopping:
                        checkpoint()
                    if stopping:
                        interrupted = True
                        monitor.write(f"stopped at step {state.step}; checkpoint saved, rerun to resume")
                        break
                    if state.step >= total_steps:
                        break
                else:
                    state.epoch += 1
                    state.batch_in_epoch = 0
            except DataError as exc:
                checkpoint()
                raise TrainingError(str(exc)) from exc

    model_dir = None
    if not interrupted:
        checkpoint()
        final_metrics = evaluate()
        final_state = full_model_state(model, cfg.strategy, dist)
        if dist.is_main:
            model_dir = output_dir / "model"
            final = CLIP(model.config)
            final.load_state_dict({k: v.float() for k, v in final_state.items()})
            save_model(final, model_dir)
            _write_summary(output_dir, state, final_metrics, state.bad_samples)
            if cfg.logging.plot:
                _plot(ctx)
    monitor.close()
    barrier(dist)  # every rank leaves together, after rank 0 has written the final model
    bad = dict(state.bad_samples)
    return TrainResult(state, output_dir, model_dir, interrupted, final_metrics, bad, stop.signum, dist.is_main)


def _clip_gradients(model: CLIP, max_norm: float | None) -> float:
    """Clip the global gradient norm; returns the norm before clipping (NaN when clipping is off)."""
    if max_norm is None:
        return float("nan")
    params = [p for p in model.parameters() if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)  # a DTensor under FSDP


def _log_step(
    ctx: RunContext,
    cfg: TrainConfig,
    state: TrainState,
    loss: float,
    optimizer,
    model: CLIP,
    grad_norm: float,
    bad_new: dict[str, int],
    total_steps: int,
) -> None:
    lr = optimizer.param_groups[0]["lr"]
    ctx.monitor.advance(1, {"loss": f"{loss:.4f}", "lr": f"{lr:.2e}"})
    if state.step % cfg.logging.every_steps and state.step != total_steps:
        return
    # One collective for both: the mean loss, and the bad samples every rank met since the last checkpoint.
    means = all_reduce_mean(torch.tensor([loss, float(sum(bad_new.values()))], device=ctx.dist.device), ctx.dist)
    loss_mean = float(means[0])
    bad_samples = sum(state.bad_samples.values()) + round(float(means[1]) * ctx.dist.world_size)
    rate = ctx.monitor.rate(state.samples_seen)
    record = {
        "step": state.step,
        "epoch": state.epoch,
        "loss": loss_mean,
        "lr": lr,
        "logit_scale": float(model.logit_scale.detach().exp()),
        "grad_norm": grad_norm,
        "samples_per_s": rate,
        "samples_seen": state.samples_seen,
        "bad_samples": bad_samples,
        "skipped_nan_steps": state.skipped_nan_steps,
    }
    ctx.monitor.log(record)
    if ctx.monitor.bar is not None:
        ctx.monitor.bar.set_postfix(
            {"loss": f"{loss_mean:.4f}", "lr": f"{lr:.2e}", "samples/s": f"{rate:.0f}"}, refresh=True
        )


def _write_summary(output_dir: Path, state: TrainState, metrics: dict[str, float], bad: dict[str, int]) -> None:
    worst = dict(sorted(bad.items(), key=lambda kv: -kv[1])[:20])
    summary = {
        "state": vars(state),
        "final_metrics": metrics,
        "bad_samples_total": sum(bad.values()),
        "bad_samples_worst": worst,
    }
    atomic_write_bytes(output_dir / "summary.json", (json_text(summary, indent=2) + "\n").encode())


def _plot(ctx: RunContext) -> None:
    try:
        from .plots import plot_training_curves
    except ImportError:
        return
    try:
        plot_training_curves(ctx.output_dir / "metrics.jsonl", ctx.output_dir / "curves.png")
    except ImportError as exc:  # matplotlib missing: the run itself succeeded
        ctx.monitor.write(f"no plot: {exc}")
