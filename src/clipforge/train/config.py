"""TrainConfig: every choice of a training run as frozen, validated dataclasses (STYLE.md rules 2, 5, 6).

Recipes (`clipforge.recipes`, or a user's .py file) return a TrainConfig; the CLI only applies `--section.field=value`
overrides (train/overrides.py) and writes the resolved config beside the outputs. Run state (rank,
paths, loggers) lives in `RunContext`, never in here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from ..data import DataConfig, SourceConfig
from ..eval.tasks import EvalRequest
from ..models.config import ConfigError

Precision = Literal["fp32", "bf16", "pure_bf16"]
LossKind = Literal["clip", "siglip", "classifier"]
NanPolicy = Literal["stop", "skip"]


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


@dataclass(frozen=True)
class ModelSpec:
    """What to train.

    Fields:
        name: architecture name from `clipforge.list_models()`.
        pretrained: initialise from a pretrained tag, checkpoint file/folder or hub id (anything
            `load_model` reads whose tensors fit `name`); None starts from random weights.
        overrides: CLIPConfig overrides as for `create_model` (e.g. {"vision": {"patch_dropout": 0.5}}).
        lock_image: freeze the image tower (LiT, Zhai et al. 2022).
        lock_image_unlocked_groups: with lock_image, leave the last N transformer blocks (ViT) or
            stages (ResNet) trainable.
        lock_text: freeze the text tower.
        lock_text_unlocked_layers: with lock_text, leave the last N text transformer blocks trainable.
        grad_checkpointing: recompute activations in backward (memory for compute).
        compile: wrap the model with torch.compile.
        teacher: a frozen teacher model for distillation (`load_model` source or `NAME:TAG`); None: no distillation.
    """

    name: str = "tiny-vit"
    pretrained: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    lock_image: bool = False
    lock_image_unlocked_groups: int = 0
    lock_text: bool = False
    lock_text_unlocked_layers: int = 0
    grad_checkpointing: bool = False
    compile: bool = False
    teacher: str | None = None


@dataclass(frozen=True)
class OptimConfig:
    """AdamW. Weight decay skips gains, biases, embeddings and the temperature (CLIP paper, App. F).

    Fields:
        lr: peak learning rate (reached after schedule.warmup_steps).
        weight_decay: decoupled AdamW weight decay of the decayed parameters.
        beta1 / beta2: AdamW moment coefficients.
        eps: AdamW denominator epsilon.
        grad_clip: max global gradient norm; None: no clipping.
    """

    lr: float = 5e-4
    weight_decay: float = 0.2
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-6
    grad_clip: float | None = 1.0

    def __post_init__(self) -> None:
        _check(self.lr > 0, f"optim.lr must be positive, got {self.lr}")
        _check(self.weight_decay >= 0, f"optim.weight_decay must be >= 0, got {self.weight_decay}")
        _check(
            self.grad_clip is None or self.grad_clip > 0,
            f"optim.grad_clip must be positive or null, got {self.grad_clip}",
        )


@dataclass(frozen=True)
class ScheduleConfig:
    """Length and learning-rate schedule.

    Fields:
        epochs: passes over the data (a pass = `TrainData.batches_per_epoch()` optimizer steps x accum).
        max_steps: cap on optimizer steps (None: epochs decide).
        warmup_steps: linear warm-up from 0 to the peak lr.
        kind: "cosine" (to min_lr_ratio * lr at the end) or "constant" after warm-up.
        min_lr_ratio: with "cosine", the final lr as a fraction of the peak.
        accum_steps: micro-batches per optimizer step; the loss sees all accum x batch samples as
            negatives (features of the other micro-batches are cached, as in open_clip).
    """

    epochs: int = 1
    max_steps: int | None = None
    warmup_steps: int = 0
    kind: Literal["cosine", "constant"] = "cosine"
    min_lr_ratio: float = 0.0
    accum_steps: int = 1

    def __post_init__(self) -> None:
        _check(self.epochs >= 1, f"schedule.epochs must be >= 1, got {self.epochs}")
        _check(self.accum_steps >= 1, f"schedule.accum_steps must be >= 1, got {self.accum_steps}")
        _check(self.kind in ("cosine", "constant"), f"schedule.kind must be 'cosine' or 'constant', got {self.kind!r}")
        _check(self.max_steps is None or self.max_steps >= 1, f"schedule.max_steps must be >= 1, got {self.max_steps}")


@dataclass(frozen=True)
class LossConfig:
    """Fields:
    kind: "clip" (InfoNCE), "siglip" (sigmoid; the model needs a logit_bias, init_logit_bias set) or
        "classifier": full fine-tuning of the image tower with cross-entropy against the frozen zero-shot head
        (FLYP / WiSE-FT; train/classifier.py). The text tower and temperature are locked; each caption must
        be a caption template filled with one of `classes`, which gives the sample's label.
    local_loss / gather_with_grad: open_clip's options for multi-rank InfoNCE. Both on (the default)
        is the exact full-batch gradient under DDP with each rank computing only its rows; with
        gather_with_grad off, tower gradients are 1/world_size of the full-batch ones (open_clip's
        default behaviour). No effect on one process.
    distill_weight: weight of the distillation term (with model.teacher); distill_feature_weight: feature MSE term.
    max_logit_scale: the temperature clamp (100 in the CLIP paper).
    classes: kind "classifier": the class names, in label order; empty means Fashion-MNIST's classes (allowed
        only when every data source is fashion_mnist).
    class_templates: kind "classifier": prompt templates ("{}" = class name) of the zero-shot head; empty means
        the zero-shot templates of the data's dataset (FASHION_TEST_TEMPLATES for fashion_mnist sources), else
        ("a photo of a {}.",).
    caption_templates: kind "classifier": how the training captions were written from the class names, to
        read each sample's label back from its caption; empty means the fashion_mnist sources' own caption
        templates, and "{}" (the caption is the class name) for the other sources.
    The three classifier fields are ignored by the other kinds; checks that involve other sections (classes
    needed for non-Fashion-MNIST data, no teacher) run when training starts (train/classifier.py), so that
    command-line overrides can set the fields in any order.
    """

    kind: LossKind = "clip"
    local_loss: bool = True
    gather_with_grad: bool = True
    distill_weight: float = 1.0
    distill_feature_weight: float = 0.0
    max_logit_scale: float = 100.0
    classes: tuple[str, ...] = ()
    class_templates: tuple[str, ...] = ()
    caption_templates: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check(
            self.kind in ("clip", "siglip", "classifier"),
            f"loss.kind must be 'clip', 'siglip' or 'classifier', got {self.kind!r}",
        )
        for name in ("classes", "class_templates", "caption_templates"):
            value = getattr(self, name)
            _check(
                isinstance(value, (tuple, list)) and all(isinstance(v, str) for v in value),
                f"loss.{name} must be a list of strings, got {value!r}",
            )
            object.__setattr__(self, name, tuple(value))
        for i, name in enumerate(self.classes):
            _check(bool(name.strip()), f"loss.classes[{i}] is empty; give every class a name")
        duplicates = sorted({c for c in self.classes if self.classes.count(c) > 1})
        _check(not duplicates, f"loss.classes names {duplicates} more than once; class names must be unique")
        for name in ("class_templates", "caption_templates"):
            for template in getattr(self, name):
                _check(
                    template.count("{}") == 1,
                    f"loss.{name}: template {template!r} needs exactly one '{{}}' where the class name goes",
                )


@dataclass(frozen=True)
class PhaseConfig:
    """A CLIPA-style phase (Li et al. 2023): train at a reduced image size / text length first.

    Fields:
        fraction: share of all steps spent in this phase (phases run in order; fractions sum to 1).
        image_size: training image size in this phase (images are resized); None keeps the model's.
        context_length: text tokens kept in this phase; None keeps the model's.
        patch_dropout: fraction of image patches dropped in this phase; None keeps the model's.
    """

    fraction: float = 1.0
    image_size: int | None = None
    context_length: int | None = None
    patch_dropout: float | None = None


@dataclass(frozen=True)
class CheckpointConfig:
    """Checkpoints for resuming a stopped run.

    Fields:
        every_steps: save every N optimizer steps; None: only at the end and on SIGTERM/SIGINT.
        keep_last: checkpoints kept; older ones are deleted.
        resume: "auto" resumes from the newest readable checkpoint in the output folder if any (a damaged
            newer one is skipped with a warning; if none is readable the run stops and asks for restart); a
            path resumes from that checkpoint; None never resumes.
        restart: start over at step 0 in a folder that holds an earlier run (CLI: --restart): its
            metrics.jsonl, checkpoints/, summary.json, model/ and config.json are moved aside with a .N
            suffix (never deleted), then the run starts as in an empty folder.
    """

    every_steps: int | None = 500
    keep_last: int = 2
    resume: str | None = "auto"
    restart: bool = False

    def __post_init__(self) -> None:
        _check(self.keep_last >= 1, f"checkpoint.keep_last must be >= 1, got {self.keep_last}")


@dataclass(frozen=True)
class LogConfig:
    """Logging of the training curves.

    Fields:
        every_steps: write a metrics.jsonl record and refresh the progress bar every N steps.
        progress: show a progress bar (rank 0 only).
        tensorboard: also write TensorBoard event files under OUTPUT_DIR/tensorboard.
        wandb: Weights & Biases project name; None: off.
        plot: write curves.png (loss, lr, evaluation metrics) at the end.
    """

    every_steps: int = 10
    progress: bool = True
    tensorboard: bool = False
    wandb: str | None = None
    plot: bool = True


@dataclass(frozen=True)
class EvalConfig:
    """Periodic evaluation.

    Fields:
        every_steps: run during training every N steps (None: only at the end).
        zeroshot: "fashion_mnist" evaluates zero-shot top-1/top-5 on its 10,000-image test split
            with FASHION_TEST_TEMPLATES (never used in training captions); None: off.
        zeroshot_max_samples: cap on evaluated images (None: all).
        retrieval: a held-out image-caption source for image<->text recall@1/5/10; None: off.
        retrieval_max_samples: cap on held-out pairs.
        harness: evaluation-harness requests (`clipforge.eval.tasks.EvalRequest`: any task on any
            dataset `clipforge eval` knows), logged as eval/<dataset>_<task>_<metric>.
    """

    every_steps: int | None = None
    zeroshot: str | None = None
    zeroshot_max_samples: int | None = None
    retrieval: SourceConfig | None = None
    retrieval_max_samples: int | None = 1000
    harness: tuple[EvalRequest, ...] = ()


@dataclass(frozen=True)
class TrainConfig:
    """A whole training run. `output_dir` receives config.json, metrics.jsonl, checkpoints/, model/, curves.png.

    Fields (besides the sections model, data, optim, schedule, loss, checkpoint, logging, eval):
        output_dir: folder of this run's outputs and checkpoints (rerunning into it resumes).
        seed: seed of model initialisation and of every other random choice outside the data.
        device: torch device; None: cuda:LOCAL_RANK when available, else cpu.
        strategy: "ddp" (replicas) or "fsdp" (shard the towers with FSDP2 when running on several ranks).
        precision: "fp32", "bf16" (autocast) or "pure_bf16" (bf16 weights).
        nan_policy: "stop" or "skip" a step whose loss is not finite.
        phases: CLIPA-style reduced-size phases (a JSON list of PhaseConfig objects); empty: one plain phase.
    """

    output_dir: str = "runs/default"
    seed: int = 0
    device: str | None = None
    strategy: Literal["ddp", "fsdp"] = "ddp"
    precision: Precision = "fp32"
    nan_policy: NanPolicy = "stop"
    model: ModelSpec = field(default_factory=ModelSpec)
    data: DataConfig = field(default_factory=lambda: DataConfig(sources=(SourceConfig(kind="fashion_mnist"),)))
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    phases: tuple[PhaseConfig, ...] = ()
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LogConfig = field(default_factory=LogConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        _check(self.strategy in ("ddp", "fsdp"), f"strategy must be 'ddp' or 'fsdp', got {self.strategy!r}")
        _check(
            self.precision in ("fp32", "bf16", "pure_bf16"),
            f"precision must be fp32|bf16|pure_bf16, got {self.precision!r}",
        )
        _check(self.nan_policy in ("stop", "skip"), f"nan_policy must be 'stop' or 'skip', got {self.nan_policy!r}")
        if self.phases:
            total = sum(p.fraction for p in self.phases)
            _check(abs(total - 1.0) < 1e-6, f"phases fractions must sum to 1, got {total}")

    def to_dict(self) -> dict[str, Any]:
        """The config as plain data (written as config.json beside the run's outputs)."""
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with `changes` applied (validated again)."""
        return dataclasses.replace(self, **changes)
