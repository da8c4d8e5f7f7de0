"""The inspector: a few-shot adapter on CLIP image features plus a conformal predictor, fitted from example folders.

Megahed et al. (2025) inspect parts with 50-100 example images per class and a nearest-neighbour rule on CLIP image
embeddings. `fit_inspector` does that (any `clipforge.adapt` method, default "nn1"), holds out a seeded stratified
calibration split the adapter never sees, and calibrates split-conformal prediction sets on it, so every decision
comes with a set of classes whose coverage is guaranteed at the chosen alpha. `Inspector.run(paths)` gives per
image the decision, its confidence (softmax probability), the prediction set and the nearest learning-set examples
(the evidence an engineer can look at).

A saved inspector folder holds: `adapter/` (Adapter.save: safetensors + JSON), `conformal.json`, `data.safetensors`
(support and calibration features, labels, zero-shot text weights), `inspector.json` (classes, descriptions,
config, file lists, the model reference) and, when the model's weights cannot be rebuilt from a pretrained tag
(random weights), `model/` (the model in clipforge format). No pickle anywhere.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ...adapt import Adapter, FitContext, LabelledFeatures
from ...adapt import fit as adapt_fit
from ...adapt import load as adapt_load
from ...atomic import atomic_write_bytes
from ...jsonio import json_text
from ...safeio import read_text_file
from ...weights.native import atomic_save_safetensors
from .conformal import ConformalCalibrator, ConformalPredictor

INSPECTOR_FORMAT = "clipforge.inspector"
INSPECTOR_VERSION = 1
CONFIG_NAME = "inspector.json"
DATA_NAME = "data.safetensors"
CONFORMAL_NAME = "conformal.json"
ADAPTER_DIR = "adapter"
MODEL_DIR = "model"
NOMINAL_NAMES = ("nominal", "good", "ok")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm")


@dataclass(frozen=True)
class InspectorConfig:
    """How an inspector was fitted, enough to refit it exactly: adapter `method` and its `hparams`, conformal `alpha`
    and `mode` ("class": per-class Mondrian thresholds, "global"), `calib_fraction` of each class held out for
    calibration, the split `seed`, and `k_nearest` learning-set examples reported per decision."""

    method: str = "nn1"
    alpha: float = 0.1
    mode: str = "class"
    calib_fraction: float = 0.3
    seed: int = 0
    k_nearest: int = 3
    hparams: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0.0 < self.calib_fraction < 1.0:
            raise ValueError(f"calib_fraction must be in (0, 1) (share held out per class), got {self.calib_fraction}")
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1) (the allowed miscoverage rate), got {self.alpha}")
        if self.k_nearest < 1:
            raise ValueError(f"k_nearest must be >= 1, got {self.k_nearest}")


@dataclass(frozen=True)
class ModelReference:
    """Which model the features come from: architecture `name`, `pretrained` tag/path (None: random weights, then
    the model is saved with the inspector) and `weights_hash` (eval.features.weights_hash), checked at load time so
    an inspector never runs on a different model than the one it was fitted with."""

    name: str | None
    pretrained: str | None
    weights_hash: str


def nominal_index(classnames: Sequence[str]) -> int | None:
    """Index of the class that means "no defect" (named nominal, good or ok, any case), or None."""
    for i, name in enumerate(classnames):
        if name.strip().lower() in NOMINAL_NAMES:
            return i
    return None


def _class_folders(root: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))


def _images_in(folder: Path) -> list[str]:
    """Image files under `folder` (recursive, sorted, hidden ones left out). FIFOs and broken links with an image
    suffix are listed on purpose: reading them fails and they are then reported as skipped, never silently lost."""
    return sorted(
        str(p)
        for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and not p.is_dir()
    )


def scan_examples(examples_root: str | Path) -> tuple[list[str], list[str], list[int]]:
    """(class names = sub-folder names, image paths, labels) of an examples folder ROOT/CLASS/*.png."""
    root = Path(examples_root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such examples folder; give a folder with one sub-folder per class")
    classes = _class_folders(root)
    if len(classes) < 2:
        raise ValueError(
            f"{root}: found {len(classes)} class folder(s) {classes}; an inspector needs at least 2 (e.g. nominal/ "
            "and one defect kind), each holding example images"
        )
    paths, labels = [], []
    for label, name in enumerate(classes):
        found = _images_in(root / name)
        paths.extend(found)
        labels.extend([label] * len(found))
    return classes, paths, labels


def stratified_split(labels: Sequence[int], num_classes: int, fraction: float, seed: int, names: Sequence[str]):
    """(support indices, calibration indices): per class, round(fraction * n_c) images (at least 1) held out for
    calibration, chosen by a seeded permutation; every class keeps at least one support image. A class with fewer
    than 2 images cannot be split: ValueError naming it."""
    generator = torch.Generator().manual_seed(seed)
    y = torch.as_tensor(list(labels), dtype=torch.long)
    support, calib = [], []
    for c in range(num_classes):
        members = torch.nonzero(y == c).flatten()
        n = members.numel()
        if n < 2:
            raise ValueError(
                f"class {names[c]!r} has {n} readable example image(s); an inspector needs at least 2 per class (one "
                "to learn from, one to calibrate on), and about 1/alpha per class for finite per-class conformal "
                "thresholds: add images to that class folder"
            )
        n_cal = min(n - 1, max(1, round(fraction * n)))
        order = members[torch.randperm(n, generator=generator)]
        calib.extend(order[:n_cal].tolist())
        support.extend(order[n_cal:].tolist())
    return sorted(support), sorted(calib)


def text_weights_for(model: Any, classnames: Sequence[str], descriptions: Mapping[str, Any] | None) -> torch.Tensor:
    """(D, C) zero-shot text weights: a class with a description uses it (a string or a list of strings, each one
    prompt, averaged) instead of the prompt templates on its readable name ("local_defect" -> "local defect")."""
    from ...eval.datasets.base import readable_name
    from ...factory import get_tokenizer
    from ...zeroshot import get_templates
    from ...zeroshot.templates import render

    tokenizer = get_tokenizer(model)
    templates = get_templates("simple")
    device = next(model.parameters()).device
    columns = []
    with torch.no_grad():
        for name in classnames:
            described = (descriptions or {}).get(name)
            if described is None:
                prompts = [render(t, readable_name(name)) for t in templates]
            else:
                prompts = [described] if isinstance(described, str) else list(described)
            embedded = model.encode_text(tokenizer(prompts).to(device), normalize=True).float()  # (P, D)
            columns.append(F.normalize(embedded.mean(dim=0), dim=-1).cpu())
    return torch.stack(columns, dim=1)  # (D, C)


def check_descriptions(descriptions: Any, classnames: Sequence[str], where: str = "descriptions") -> dict:
    """`descriptions` as {class: str | [str, ...]}; ValueError naming an unknown class or a bad value."""
    if descriptions is None:
        return {}
    if not isinstance(descriptions, Mapping):
        kind = type(descriptions).__name__
        raise ValueError(f"{where}: expected a JSON object {{class folder name: description}}, got {kind}")
    out = {}
    for key, value in descriptions.items():
        if key not in classnames:
            raise ValueError(f"{where}: {key!r} is not a class folder; the classes are {', '.join(classnames)}")
        ok_list = isinstance(value, list) and value and all(isinstance(v, str) and v.strip() for v in value)
        if not (isinstance(value, str) and value.strip()) and not ok_list:
            raise ValueError(f"{where}: the description of {key!r} must be a non-empty string or list of strings")
        out[key] = value
    return out


def encode_paths(
    model: Any, paths: Sequence[str], batch_size: int = 32
) -> tuple[torch.Tensor, list[int], dict[int, str]]:
    """(features (N_kept, D) float32 L2-normalised on CPU, kept positions, {position: why skipped}) for image files.
    An unreadable file (corrupt, FIFO, missing) is skipped with its reason, never fatal."""
    from ...factory import get_preprocess
    from ...image import ImageLoadError, load_image

    preprocess = get_preprocess(model)
    device = next(model.parameters()).device
    chunks, kept, skipped = [], [], {}
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(paths), batch_size):
            tensors = []
            for i in range(start, min(start + batch_size, len(paths))):
                try:
                    tensors.append(preprocess(load_image(paths[i])))
                    kept.append(i)
                except (ImageLoadError, OSError) as exc:
                    skipped[i] = "no such file" if isinstance(exc, FileNotFoundError) else str(exc)
            if tensors:
                with torch.no_grad():
                    chunks.append(model.encode_image(torch.stack(tensors).to(device), normalize=True).float().cpu())
    finally:
        model.train(was_training)
    dim = model.config.embed_dim if hasattr(model, "config") else 0
    features = torch.cat(chunks) if chunks else torch.zeros(0, dim)
    return features, kept, skipped


class Inspector:
    """A fitted inspector. `adapter` scores image features (N, D) -> logits (N, C); `conformal` turns the softmax
    probabilities into prediction sets; `support` (the learning set) and `calibration` (held out) are the labelled
    features with their file paths; `text_weights` (D, C) the zero-shot weights the adapter was fitted with; `model`
    the CLIP model (None until attached: `run` needs it, `decide` on features does not)."""

    def __init__(
        self,
        *,
        adapter: Adapter,
        conformal: ConformalPredictor,
        classnames: Sequence[str],
        config: InspectorConfig,
        model_ref: ModelReference,
        support: LabelledFeatures,
        support_paths: Sequence[str],
        calibration: LabelledFeatures,
        calibration_paths: Sequence[str],
        text_weights: torch.Tensor,
        logit_scale: float,
        descriptions: Mapping[str, Any] | None = None,
        skipped: Mapping[str, str] | None = None,
        model: Any = None,
    ) -> None:
        self.adapter = adapter
        self.conformal = conformal
        self.classnames = tuple(classnames)
        self.config = config
        self.model_ref = model_ref
        self.support, self.support_paths = support, list(support_paths)
        self.calibration, self.calibration_paths = calibration, list(calibration_paths)
        self.text_weights = text_weights
        self.logit_scale = float(logit_scale)
        self.descriptions = dict(descriptions or {})
        self.skipped = dict(skipped or {})  # example images that could not be read at fit time: path -> why
        self.model = model

    @property
    def nominal(self) -> int | None:
        """Index of the nominal ("no defect") class, or None when no class is named nominal/good/ok."""
        return nominal_index(self.classnames)

    def context(self) -> FitContext:
        """The FitContext the adapter was fitted with (refits for the learning curve use it too)."""
        return FitContext(text_weights=self.text_weights, logit_scale=self.logit_scale)

    @torch.no_grad()
    def probabilities(self, features: torch.Tensor) -> torch.Tensor:
        """(N, C) softmax probabilities of image features (N, D)."""
        return self.adapter.logits(features).float().softmax(dim=-1)

    @torch.no_grad()
    def nearest(self, features: torch.Tensor, k: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(similarities, support indices), each (N, k): the most similar learning-set images by cosine."""
        k = min(k or self.config.k_nearest, len(self.support))
        if hasattr(self.adapter, "nearest"):
            return self.adapter.nearest(features, k)
        return (features.float() @ self.support.features.float().T).topk(k, dim=-1)

    def decide(self, features: torch.Tensor, paths: Sequence[str]) -> list[dict[str, Any]]:
        """One record per feature row: image, decision, confidence, prediction_set, probabilities, nearest."""
        if features.shape[0] == 0:
            return []
        probs = self.probabilities(features)  # (N, C)
        sets = self.conformal.predict_sets(probs)  # (N, C) bool
        sims, idx = self.nearest(features)  # (N, k) each
        records = []
        for row, path in enumerate(paths):
            top = int(probs[row].argmax())
            records.append(
                {
                    "image": str(path),
                    "decision": self.classnames[top],
                    "confidence": float(probs[row, top]),
                    "prediction_set": [self.classnames[c] for c in range(len(self.classnames)) if sets[row, c]],
                    "probabilities": {name: float(probs[row, c]) for c, name in enumerate(self.classnames)},
                    "nearest": [
                        {
                            "image": self.support_paths[int(i)],
                            "class": self.classnames[int(self.support.labels[int(i)])],
                            "similarity": float(s),
                        }
                        for s, i in zip(sims[row], idx[row])
                    ],
                }
            )
        return records

    def run(self, paths: Sequence[str], batch_size: int = 32) -> list[dict[str, Any]]:
        """Inspect image files: one record per path in input order; an unreadable file gets {"image", "error"}."""
        if self.model is None:
            raise ValueError("Inspector.run needs the CLIP model: load it with load_inspector(dir) or set .model")
        paths = [str(p) for p in paths]
        features, kept, skipped = encode_paths(self.model, paths, batch_size)
        decided = iter(self.decide(features, [paths[i] for i in kept]))
        return [{"image": p, "error": skipped[i]} if i in skipped else next(decided) for i, p in enumerate(paths)]

    def save(self, folder: str | Path) -> Path:
        """Write the inspector folder (see the module docstring); the model too when it has random weights."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.adapter.save(folder / ADAPTER_DIR)
        atomic_write_bytes(folder / CONFORMAL_NAME, (json_text(self.conformal.to_dict(), indent=2) + "\n").encode())
        tensors = {
            "support_features": self.support.features.float().contiguous(),
            "support_labels": self.support.labels.long().contiguous(),
            "calibration_features": self.calibration.features.float().contiguous(),
            "calibration_labels": self.calibration.labels.long().contiguous(),
            "text_weights": self.text_weights.float().contiguous(),
        }
        atomic_save_safetensors(tensors, folder / DATA_NAME, metadata={"format": INSPECTOR_FORMAT})
        if self.model_ref.pretrained is None and self.model is not None:
            from ...weights.loading import save_model

            save_model(self.model, folder / MODEL_DIR)
        config = {
            "format": INSPECTOR_FORMAT,
            "version": INSPECTOR_VERSION,
            "classnames": list(self.classnames),
            "descriptions": self.descriptions,
            "config": asdict(self.config),
            "model": asdict(self.model_ref),
            "logit_scale": self.logit_scale,
            "support_paths": self.support_paths,
            "calibration_paths": self.calibration_paths,
            "skipped": self.skipped,
        }
        atomic_write_bytes(folder / CONFIG_NAME, (json_text(config, indent=2) + "\n").encode())
        return folder


@dataclass(frozen=True)
class _EncodedExamples:
    features: LabelledFeatures
    indices: list[int]  # dataset index of each feature row
    skipped: dict[int, str]  # dataset index -> why it could not be read
    dataset_paths: tuple[str, ...]


def _encode_examples(model: Any, examples_root: str | Path, batch_size: int) -> _EncodedExamples:
    """Features of every readable example image through `clipforge.adapt.data` (the eval feature encoder), with the
    file paths kept (the nearest-example evidence needs them). The split "." makes load_folder read ROOT itself,
    so a class folder may be called train or test."""
    from ...adapt.data import encode_labelled_set
    from ...eval.datasets.folder import load_folder

    dataset = load_folder(str(examples_root), ".", name="inspect-examples")
    try:
        encoded = encode_labelled_set(model, dataset, batch_size=batch_size)
    except ValueError as exc:
        raise ValueError(f"{examples_root}: {exc}; the example images must be readable image files") from exc
    return _EncodedExamples(encoded.features, list(encoded.indices), dict(encoded.skipped), dataset.images.paths)


def _model_reference(model: Any, name: str | None, pretrained: str | None) -> ModelReference:
    from ...eval.features import weights_hash

    return ModelReference(name=name, pretrained=pretrained, weights_hash=weights_hash(model))


def fit_inspector(
    model: Any,
    examples_root: str | Path,
    *,
    method: str = "nn1",
    calib_fraction: float = 0.3,
    alpha: float = 0.1,
    mode: str = "class",
    seed: int = 0,
    descriptions: Mapping[str, Any] | None = None,
    model_name: str | None = None,
    pretrained: str | None = None,
    batch_size: int = 32,
    **hparams: Any,
) -> Inspector:
    """Fit an inspector from `examples_root`/CLASS/*.png: encode the images with `model`, hold out a seeded
    stratified `calib_fraction` of each class, fit adapter `method` (hyper-parameters `hparams`, the papers'
    defaults otherwise) on the rest, calibrate conformal sets at `alpha` (`mode` "class": per-class thresholds) on
    the held-out part. `descriptions` {class: text or [texts]} replace the prompts of those classes in the zero-shot
    text weights. `model_name` / `pretrained` are recorded so that `load_inspector` can rebuild the model."""
    config = InspectorConfig(
        method=method, alpha=alpha, mode=mode, calib_fraction=calib_fraction, seed=seed, hparams=dict(hparams)
    )
    classes = scan_examples(examples_root)[0]
    descriptions = check_descriptions(descriptions, classes)
    encoded = _encode_examples(model, examples_root, batch_size)
    paths = list(encoded.dataset_paths)
    skipped = {paths[i]: why for i, why in sorted(encoded.skipped.items())}
    if skipped:
        first = next(iter(skipped))
        warnings.warn(
            f"{len(skipped)} example image(s) could not be read and are left out (first: {first}: {skipped[first]})",
            UserWarning,
            stacklevel=2,
        )
    features, kept_labels = encoded.features.features, encoded.features.labels  # (N, D), (N,)
    kept_paths = [paths[i] for i in encoded.indices]
    support_idx, calib_idx = stratified_split(kept_labels.tolist(), len(classes), calib_fraction, seed, classes)
    support = LabelledFeatures(features[support_idx], kept_labels[support_idx], tuple(classes))
    calibration = LabelledFeatures(features[calib_idx], kept_labels[calib_idx], tuple(classes))
    text_weights = text_weights_for(model, classes, descriptions)
    logit_scale = float(model.logit_scale.detach().exp())
    ctx = FitContext(text_weights=text_weights, logit_scale=logit_scale)
    adapter = adapt_fit(method, ctx, support, None, **hparams)
    with torch.no_grad():
        probs_cal = adapter.logits(calibration.features).float().softmax(dim=-1)  # (n_cal, C)
    conformal = ConformalCalibrator.fit(probs_cal, calibration.labels, alpha, mode=mode, class_names=classes)
    return Inspector(
        adapter=adapter,
        conformal=conformal,
        classnames=classes,
        config=config,
        model_ref=_model_reference(model, model_name, pretrained),
        support=support,
        support_paths=[kept_paths[i] for i in support_idx],
        calibration=calibration,
        calibration_paths=[kept_paths[i] for i in calib_idx],
        text_weights=text_weights,
        logit_scale=logit_scale,
        descriptions=descriptions,
        skipped=skipped,
        model=model,
    )


def _load_model(folder: Path, ref: ModelReference, device: Any) -> Any:
    from ...weights.loading import create_model, load_model

    if (folder / MODEL_DIR).is_dir():
        return load_model(folder / MODEL_DIR, device=device)
    if ref.pretrained is None:
        raise FileNotFoundError(
            f"{folder / MODEL_DIR}: the inspector was fitted on a model with random weights and its copy is missing; "
            "refit the inspector or pass model= to load_inspector"
        )
    if ref.name is None:
        return load_model(ref.pretrained, device=device)
    return create_model(ref.name, pretrained=ref.pretrained, device=device)


def load_inspector(folder: str | Path, model: Any = None, *, device: Any = None, load_model: bool = True) -> Inspector:
    """Rebuild a saved inspector. The model is `model` when given, else rebuilt from the saved reference (the copy
    in `model/`, or the pretrained tag/path); its weights must hash to the ones the inspector was fitted with.
    `load_model=False` skips the model (enough for `decide` on features and for the report)."""
    folder = Path(folder)
    config_path = folder / CONFIG_NAME
    try:
        raw = json.loads(read_text_file(config_path, what="inspector config"))
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{config_path}: no inspector here; give the folder `inspect fit --out` wrote") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"{config_path}: not valid JSON ({exc}); refit the inspector") from exc
    if not isinstance(raw, dict) or raw.get("format") != INSPECTOR_FORMAT:
        raise ValueError(f"{config_path}: not a clipforge inspector (expected 'format': '{INSPECTOR_FORMAT}')")
    if raw.get("version") != INSPECTOR_VERSION:
        version = raw.get("version")
        raise ValueError(f"{config_path}: inspector version {version!r}, this clipforge reads {INSPECTOR_VERSION}")
    try:
        classnames = tuple(raw["classnames"])
        config = InspectorConfig(**raw["config"])
        ref = ModelReference(**raw["model"])
        support_paths, calibration_paths = list(raw["support_paths"]), list(raw["calibration_paths"])
        logit_scale = float(raw["logit_scale"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{config_path}: missing or malformed field ({exc}); refit the inspector") from exc
    conformal_text = read_text_file(folder / CONFORMAL_NAME, what="conformal config")
    conformal = ConformalPredictor.from_dict(json.loads(conformal_text))
    from safetensors.torch import load_file

    data_path = folder / DATA_NAME
    if not data_path.is_file():
        raise FileNotFoundError(f"{data_path}: the inspector's features are missing; refit the inspector")
    data = load_file(str(data_path))
    support = LabelledFeatures(data["support_features"], data["support_labels"], classnames)
    calibration = LabelledFeatures(data["calibration_features"], data["calibration_labels"], classnames)
    if len(support_paths) != len(support) or len(calibration_paths) != len(calibration):
        raise ValueError(f"{config_path}: the file lists do not match {data_path}; refit the inspector")
    adapter = adapt_load(folder / ADAPTER_DIR)
    if model is None and load_model:
        model = _load_model(folder, ref, device)
    if model is not None:
        from ...eval.features import weights_hash

        if weights_hash(model) != ref.weights_hash:
            raise ValueError(
                f"{folder}: the model's weights differ from the ones this inspector was fitted with (model "
                f"{ref.name!r}, pretrained {ref.pretrained!r}); use that model or refit the inspector"
            )
    return Inspector(
        adapter=adapter,
        conformal=conformal,
        classnames=classnames,
        config=config,
        model_ref=ref,
        support=support,
        support_paths=support_paths,
        calibration=calibration,
        calibration_paths=calibration_paths,
        text_weights=data["text_weights"],
        logit_scale=logit_scale,
        descriptions=raw.get("descriptions") or {},
        skipped=raw.get("skipped") or {},
        model=model,
    )
