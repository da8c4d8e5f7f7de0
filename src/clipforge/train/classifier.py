"""Full fine-tuning against the zero-shot head: `loss.kind="classifier"` (FLYP / WiSE-FT).

Wortsman et al. 2022 ("Robust fine-tuning of zero-shot models", the WiSE-FT paper) fine-tune the image
tower end to end with a linear head initialised from the zero-shot classifier: class-name prompts through
the text tower, normalised, scaled by the logit scale. Here the head stays fixed: W0 (C, D) is the zero-shot
classifier of the *initial* model (`zeroshot.build_class_weights`: mean of the normalised template
embeddings, renormalised), the text tower and the temperature are locked, and the loss is

    CE(logit_scale * image_features @ W0^T, labels)         image_features: (B, D), unit norm

so the fine-tuned model is still a CLIP whose zero-shot classifier over the same classes and templates is
exactly the head it was trained with, and `clipforge.adapt.wise_ft` can interpolate it with the zero-shot
model. Each sample's label is read back from its caption: the training data are image-caption pairs whose
captions were written from the class names with the caption templates ("a photo of the {}." -> "a photo of
the sneaker."), so a table of tokenised (caption template x class) rows maps a caption's tokens to its class.
A caption found in no row is an error naming it and the fields to fix, never a silently skipped sample.

The head and the table are stored beside the checkpoints (`checkpoints/classifier_head.safetensors`) when a
fresh run starts, and read back on resume, rather than rebuilt from the model: rebuilding would run the text
tower again, possibly on another machine, device or precision (oneDNN's AMX kernels and AVX2 round
differently), so the resumed run would train against a slightly different head than the one it started
with; the stored head is bit-identical and needs neither the initial model nor the text tower to be run.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load as load_safetensors

from ..models.clip import CLIP
from ..models.config import ConfigError
from ..safeio import read_regular_file
from ..weights.native import atomic_save_safetensors
from ..zeroshot.classifier import build_class_weights
from .config import TrainConfig

HEAD_FILE = "classifier_head.safetensors"
DEFAULT_CLASS_TEMPLATES: tuple[str, ...] = ("a photo of a {}.",)
_FORMAT = "clipforge-classifier-head"
_MAX_HEAD_BYTES = 1 << 31  # a (C, D) head and a (K, L) token table: far below this even for ImageNet-21k


class CaptionLabelError(ConfigError):
    """A training caption is no caption template filled with a class name, so its label is unknown."""


@dataclass(frozen=True)
class HeadSpec:
    """The resolved classes and templates of a classifier run (LossConfig's fields with their defaults filled in).

    Fields:
        classes: class names, in label order.
        class_templates: prompt templates of the zero-shot head.
        caption_templates: templates the training captions were written with.
    """

    classes: tuple[str, ...]
    class_templates: tuple[str, ...]
    caption_templates: tuple[str, ...]

    def to_json(self) -> str:
        """The head's identity (classes and templates) as stored beside its weights, checked on resume."""
        fields = ("classes", "class_templates", "caption_templates")
        return json.dumps({name: list(getattr(self, name)) for name in fields})


def resolve_head_spec(cfg: TrainConfig) -> HeadSpec:
    """LossConfig's classes and templates with the data's defaults: Fashion-MNIST's classes, its zero-shot
    (test) templates for the head and its sources' caption templates; "{}" captions for other sources.

    Also the classifier's checks across config sections (ConfigError naming the field to set); the trainer
    calls it before building anything."""
    from ..data import FASHION_MNIST_CLASSES, FASHION_TEST_TEMPLATES, FASHION_TRAIN_TEMPLATES

    loss, sources = cfg.loss, cfg.data.sources
    if cfg.model.teacher is not None:
        raise ConfigError(
            "model.teacher (distillation) does not apply with loss.kind='classifier'; set model.teacher=null"
        )
    others = sorted({s.kind for s in sources} - {"fashion_mnist"})
    classes = loss.classes or (FASHION_MNIST_CLASSES if not others else ())
    if not classes:
        raise ConfigError(
            "loss.classes is empty, which means Fashion-MNIST's classes, but the data has sources of kind "
            f"{others}; set loss.classes to the class names (--loss.classes='[\"cat\", \"dog\"]')"
        )
    class_templates = loss.class_templates or (FASHION_TEST_TEMPLATES if not others else DEFAULT_CLASS_TEMPLATES)
    caption_templates = loss.caption_templates
    if not caption_templates:
        found: list[str] = []
        for source in sources:
            own = (source.templates or FASHION_TRAIN_TEMPLATES) if source.kind == "fashion_mnist" else ("{}",)
            found += [t for t in own if t not in found]
        caption_templates = tuple(found)
    return HeadSpec(tuple(classes), tuple(class_templates), tuple(caption_templates))


def lock_for_classifier(model: CLIP) -> None:
    """Freeze the text tower, the temperature and the bias: only the image tower learns (and DDP sees only it)."""
    model.text.requires_grad_(False)
    model.logit_scale.requires_grad_(False)
    if isinstance(getattr(model, "logit_bias", None), torch.nn.Parameter):
        model.logit_bias.requires_grad_(False)


def classifier_loss(
    image_features: torch.Tensor, logit_scale: torch.Tensor, head: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """Mean cross-entropy of `logit_scale * image_features @ head^T` against `labels`.

    image_features: (B, D) unit-norm features (the model's output); logit_scale: the exponentiated
    temperature (scalar); head: (C, D) unit-norm class weights; labels: (B,) class indices.
    """
    if image_features.ndim != 2 or head.ndim != 2 or image_features.shape[1] != head.shape[1]:
        raise ValueError(
            f"classifier_loss needs image_features (B, D) and head (C, D); got {tuple(image_features.shape)} and "
            f"{tuple(head.shape)}"
        )
    return F.cross_entropy(head_logits(head, image_features, logit_scale), labels)


class ClassifierHead:
    """The fixed head W0 (C, D) and the caption -> label table of a classifier run.

    `weights`: (C, D) float32 unit rows; `caption_tokens`: (K, L) int64 token rows of every caption template
    x class; `caption_labels`: (K,) their class indices.
    """

    def __init__(
        self,
        spec: HeadSpec,
        weights: torch.Tensor,
        caption_tokens: torch.Tensor,
        caption_labels: torch.Tensor,
        tokenizer: Callable,
    ) -> None:
        self.spec = spec
        self.weights = weights  # (C, D)
        self.caption_tokens = caption_tokens  # (K, L)
        self.caption_labels = caption_labels  # (K,)
        self._tokenizer = tokenizer
        self._label_of = _label_table(spec, caption_tokens, caption_labels)

    @classmethod
    @torch.no_grad()
    def build(cls, model: CLIP, tokenizer: Callable, spec: HeadSpec) -> ClassifierHead:
        """The head of `model`'s text tower as it is now (call it before any training step)."""
        weights = build_class_weights(model, tokenizer, spec.classes, spec.class_templates).T.contiguous()  # (C, D)
        captions = [t.format(c) for t in spec.caption_templates for c in spec.classes]  # row = t * C + c
        tokens = tokenizer(captions).to(torch.int64).cpu()  # (K, L)
        labels = torch.arange(len(spec.classes), dtype=torch.int64).repeat(len(spec.caption_templates))  # (K,)
        return cls(spec, weights.float().cpu(), tokens, labels, tokenizer)

    def labels_for(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, L) caption tokens -> (B,) int64 class indices; CaptionLabelError naming a caption found nowhere."""
        rows = np.ascontiguousarray(tokens.detach().cpu().numpy().astype(np.int64))
        if rows.ndim != 2 or rows.shape[1] != self.caption_tokens.shape[1]:
            raise ValueError(
                f"caption tokens must be (B, {self.caption_tokens.shape[1]}), got {tuple(rows.shape)}: the data's "
                "tokenizer does not match the model's context length"
            )
        labels = []
        for i, row in enumerate(rows):
            label = self._label_of.get(row.tobytes())
            if label is None:
                caption = self._tokenizer.decode(row.tolist(), skip_special_tokens=True).strip()
                raise CaptionLabelError(
                    f"the training caption {caption!r} (sample {i} of a batch) is none of loss.caption_templates "
                    f"{list(self.spec.caption_templates)} filled with one of loss.classes {list(self.spec.classes)}, "
                    "so its label is unknown; set loss.caption_templates to how the captions were written "
                    "('{}' when the caption is the class name) and loss.classes to the class names"
                )
            labels.append(label)
        return torch.tensor(labels, dtype=torch.int64)

    def save(self, path: Path) -> None:
        """Write the head, the token table and the spec atomically (safetensors: tensors + JSON metadata)."""
        tensors = {
            "weights": self.weights,
            "caption_tokens": self.caption_tokens,
            "caption_labels": self.caption_labels,
        }
        atomic_save_safetensors(tensors, path, {"format": _FORMAT, "spec": self.spec.to_json()})

    @classmethod
    def load(cls, path: Path, spec: HeadSpec, tokenizer: Callable) -> ClassifierHead:
        """The head stored at `path`, checked to hold the classes and templates of `spec` (the resumed config)."""
        data = read_regular_file(path, _MAX_HEAD_BYTES, what="classifier head")
        try:
            tensors = load_safetensors(data)
            header_size = int.from_bytes(data[:8], "little")
            metadata = json.loads(data[8 : 8 + header_size]).get("__metadata__") or {}
            stored = json.loads(metadata.get("spec", "{}"))
        except Exception as exc:  # noqa: BLE001 - any header/format failure means a damaged file
            raise ConfigError(f"{path}: cannot read the stored classifier head ({exc}); rerun with --restart") from exc
        if metadata.get("format") != _FORMAT or set(tensors) != {"weights", "caption_tokens", "caption_labels"}:
            raise ConfigError(f"{path} is not a clipforge classifier head; rerun with --restart")
        for name in ("classes", "class_templates", "caption_templates"):
            if tuple(stored.get(name, ())) != getattr(spec, name):
                raise ConfigError(
                    f"the run in {path.parent.parent} was started with loss.{name}={stored.get(name)}, but this "
                    f"config gives {list(getattr(spec, name))}; resume with the run's values, or rerun with --restart"
                )
        return cls(spec, tensors["weights"], tensors["caption_tokens"], tensors["caption_labels"], tokenizer)


def _label_table(spec: HeadSpec, tokens: torch.Tensor, labels: torch.Tensor) -> dict[bytes, int]:
    """{token row bytes: class}; two classes with one caption (e.g. cut by the context length) is an error."""
    table: dict[bytes, int] = {}
    rows = np.ascontiguousarray(tokens.numpy().astype(np.int64))
    for k, (row, label) in enumerate(zip(rows, labels.tolist())):
        key = row.tobytes()
        if table.setdefault(key, label) != label:
            template = spec.caption_templates[k // len(spec.classes)]
            raise ConfigError(
                f"loss.caption_templates: {template!r} gives the same caption tokens for the classes "
                f"{spec.classes[table[key]]!r} and {spec.classes[label]!r} (too long for the context length?), so "
                "the label cannot be read from it; shorten the template or the class names"
            )
    return table


def prepare_head(
    model: CLIP, tokenizer: Callable, spec: HeadSpec, checkpoint_dir: Path, resuming: bool, is_main: bool,
    barrier: Callable[[], None],
) -> ClassifierHead:
    """The run's head: built from the (still initial) model and stored on a fresh start, read back on resume.

    Every rank builds the same head from the same initial weights; rank 0 alone writes the file.
    """
    path = checkpoint_dir / HEAD_FILE
    if resuming:
        if not path.is_file():
            raise ConfigError(
                f"resuming a loss.kind='classifier' run needs its head {path}, which is missing (was the run started "
                "with another loss.kind?); rerun with --restart to start over"
            )
        return ClassifierHead.load(path, spec, tokenizer)
    head = ClassifierHead.build(model, tokenizer, spec)
    if is_main:
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        head.save(path)
    barrier()
    return head


def head_logits(head: ClassifierHead | torch.Tensor, image_features: torch.Tensor, logit_scale: torch.Tensor):
    """`logit_scale * image_features @ W0^T`: (B, C), the logits the classifier loss sees."""
    weights = head.weights if isinstance(head, ClassifierHead) else head
    return logit_scale * image_features @ weights.to(image_features.device, image_features.dtype).T


__all__: Sequence[str] = [
    "HEAD_FILE",
    "CaptionLabelError",
    "ClassifierHead",
    "HeadSpec",
    "classifier_loss",
    "head_logits",
    "lock_for_classifier",
    "prepare_head",
    "resolve_head_spec",
]
