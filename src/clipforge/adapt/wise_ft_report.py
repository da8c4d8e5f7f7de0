"""The WiSE-FT alpha sweep as a report: in- and out-of-distribution zero-shot accuracy per alpha, one alpha chosen.

Wortsman et al. 2022 ("Robust fine-tuning of zero-shot models", Figure 1) plot, for each mixing coefficient
alpha of `wise_ft`, the accuracy under distribution shift (y) against the in-distribution accuracy (x): the
zero-shot model (alpha 0) is robust but less accurate, the fine-tuned one (alpha 1) accurate but brittle, and
the curve between them usually bulges above the straight line, so a middle alpha beats both on both axes.
`wise_ft_report` measures that curve on local data and `WiseFTReport.write` saves it as JSON, a Markdown table
and that plot.

Every interpolated model is scored by zero-shot classification over `classnames` with `templates`: a model
fine-tuned against its zero-shot head (clipforge's fine-tuning of the image tower with cross-entropy) keeps that
head as its classifier, so the zero-shot classifier of each mixed model is its classifier. Image features go
through the feature cache (keyed by each mixed model's weights hash and each set's fingerprint, which names
its distribution shift), so re-running a sweep re-encodes nothing.

Choosing alpha never looks at the test data: with a validation set (in-distribution images the fine-tuned model
did not train on) the alpha with the best validation accuracy is chosen; without one nothing is chosen from
data, every alpha is reported and the paper's default, 0.5, is recommended. The out-of-distribution sets are
test data and are never used to choose.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from ..factory import get_preprocess, get_tokenizer
from ..models.clip import CLIP
from .wise_ft import _check_alpha, _matched_states, wise_ft_sweep

PAPER_ALPHA = 0.5  # Wortsman et al.'s recommended mixing coefficient when no validation data is available
REPORT_STEM = "wise_ft"  # wise_ft.json, wise_ft.md, wise_ft.png


class IncompatibleModelsError(ValueError):
    """The zero-shot and fine-tuned models are not two versions of one architecture (WiSE-FT cannot mix them)."""


def check_pair(zero_shot_model: CLIP, fine_tuned_model: CLIP) -> None:
    """Raise IncompatibleModelsError, naming the first difference, unless the two models can be interpolated."""
    try:
        _matched_states(zero_shot_model, fine_tuned_model)
    except ValueError as exc:
        raise IncompatibleModelsError(str(exc)) from exc


@dataclass(frozen=True)
class EncodingSettings:
    """How the sweep encodes images: feature cache folder (None: no cache), batch, workers, device, autocast."""

    cache_dir: str | Path | None = None
    batch_size: int = 256
    num_workers: int = 0
    device: torch.device | str | None = None
    dtype: torch.dtype | None = None
    progress: bool = False


@dataclass(frozen=True)
class WiseFTRow:
    """One alpha: top-1 accuracy on the in-distribution test set, each shifted set, and validation (if any)."""

    alpha: float
    id_accuracy: float
    ood_accuracy: Mapping[str, float]
    val_accuracy: float | None = None

    @property
    def mean_ood_accuracy(self) -> float:
        """The mean over the out-of-distribution sets (the paper's y axis: the average over its shifts)."""
        return sum(self.ood_accuracy.values()) / len(self.ood_accuracy)


@dataclass(frozen=True)
class WiseFTReport:
    """The sweep's rows (sorted by alpha), which sets were scored, and the chosen alpha with the rule used.

    Fields:
        rows: one WiseFTRow per alpha, ascending.
        id_name / ood_names / val_name: the sets' names as the table heads them (val_name None: no validation).
        images / skipped: per set name, how many images were scored and how many could not be read.
        chosen_alpha: the alpha the report recommends; chosen_by: "validation" or "paper default".
        rule: one sentence saying how chosen_alpha was picked (printed with the table).
        model_names: (zero-shot, fine-tuned) labels for the table and plot.
    """

    rows: tuple[WiseFTRow, ...]
    id_name: str
    ood_names: tuple[str, ...]
    val_name: str | None
    images: Mapping[str, int]
    skipped: Mapping[str, int]
    chosen_alpha: float
    chosen_by: str
    rule: str
    model_names: tuple[str, str] = ("zero-shot", "fine-tuned")
    notes: tuple[str, ...] = field(default=())

    def row(self, alpha: float) -> WiseFTRow:
        """The row of `alpha` (KeyError when it was not swept)."""
        for row in self.rows:
            if row.alpha == alpha:
                return row
        raise KeyError(f"alpha {alpha} was not in the sweep {[r.alpha for r in self.rows]}")

    def to_dict(self) -> dict[str, Any]:
        """The report as plain JSON-ready data (what wise_ft.json holds)."""
        return {
            "method": "WiSE-FT (Wortsman et al. 2022): weights (1 - alpha) * zero-shot + alpha * fine-tuned",
            "models": {"zero_shot": self.model_names[0], "fine_tuned": self.model_names[1]},
            "sets": {
                "id": self.id_name,
                "ood": list(self.ood_names),
                "val": self.val_name,
                "images": dict(self.images),
                "skipped": dict(self.skipped),
            },
            "metric": "top-1 accuracy of zero-shot classification with each interpolated model",
            "rows": [
                {
                    "alpha": r.alpha,
                    "id_accuracy": r.id_accuracy,
                    "val_accuracy": r.val_accuracy,
                    "ood_accuracy": dict(r.ood_accuracy),
                    "mean_ood_accuracy": r.mean_ood_accuracy,
                }
                for r in self.rows
            ],
            "choice": {"alpha": self.chosen_alpha, "by": self.chosen_by, "rule": self.rule},
            "notes": list(self.notes),
        }

    def markdown(self, plot: str | None = None, notes: Sequence[str] = ()) -> str:
        """The sweep as a Markdown table (accuracies in %), the choice sentence, and the plot when given."""
        zs, ft = self.model_names
        heads = ["alpha", "model", f"ID: {self.id_name}"]
        heads += [f"val: {self.val_name}"] if self.val_name else []
        heads += [f"OOD: {n}" for n in self.ood_names] + ["mean OOD"]
        lines = [
            f"# WiSE-FT sweep: {zs} (alpha 0) to {ft} (alpha 1)",
            "",
            "Top-1 accuracy (%) of zero-shot classification with the weights (1 - alpha) * zero-shot + alpha * "
            "fine-tuned. ID: the in-distribution test set; OOD: distribution-shifted test sets; images scored: "
            + ", ".join(f"{name} {count}" for name, count in self.images.items())
            + ".",
            "",
            "| " + " | ".join(heads) + " |",
            "|" + "---|" * len(heads),
        ]
        for r in self.rows:
            label = zs if r.alpha == 0.0 else ft if r.alpha == 1.0 else "WiSE-FT"
            if r.alpha == self.chosen_alpha:
                label += " (chosen)"
            cells = [f"{r.alpha:g}", label, _pct(r.id_accuracy)]
            cells += [_pct(r.val_accuracy)] if self.val_name else []
            cells += [_pct(r.ood_accuracy[n]) for n in self.ood_names] + [_pct(r.mean_ood_accuracy)]
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", f"**Chosen alpha: {self.chosen_alpha:g}** ({self.chosen_by}). {self.rule}"]
        skipped = {name: n for name, n in self.skipped.items() if n}
        if skipped:
            lines += ["", "Unreadable images skipped: " + ", ".join(f"{k} {v}" for k, v in skipped.items()) + "."]
        for note in (*self.notes, *notes):
            lines += ["", note]
        if plot:
            lines += ["", f"![OOD vs ID accuracy per alpha]({plot})"]
        return "\n".join(lines) + "\n"

    def plot(self, out_png: str | Path) -> Path:
        """Figure 1 of the paper: mean OOD accuracy against ID accuracy, one point per alpha (ImportError without
        matplotlib). Each OOD set is a faint line; the endpoints are labelled; the chosen alpha is starred."""
        from ..plotting import new_figure, save_figure

        fig = new_figure(6.4, 4.8)
        ax = fig.add_subplot(1, 1, 1)
        xs = [100 * r.id_accuracy for r in self.rows]
        for name in self.ood_names if len(self.ood_names) > 1 else ():
            ax.plot(xs, [100 * r.ood_accuracy[name] for r in self.rows], lw=0.8, alpha=0.35, marker=".", label=name)
        ys = [100 * r.mean_ood_accuracy for r in self.rows]
        mean_label = "mean OOD" if len(self.ood_names) > 1 else f"OOD: {self.ood_names[0]}"
        ax.plot(xs, ys, color="tab:purple", marker="o", lw=1.8, label=f"WiSE-FT ({mean_label})")
        for r, x, y in zip(self.rows, xs, ys):
            ends = {0.0: f"{self.model_names[0]} (α=0)", 1.0: f"{self.model_names[1]} (α=1)"}
            text = ends.get(r.alpha, f"α={r.alpha:g}")
            below = r.alpha == 1.0  # the fine-tuned label below its point: coinciding endpoints stay readable
            ax.annotate(text, (x, y), textcoords="offset points", xytext=(5, -12 if below else 5), fontsize=8)
        chosen = next((i for i, r in enumerate(self.rows) if r.alpha == self.chosen_alpha), None)
        if chosen is not None:
            ax.plot([xs[chosen]], [ys[chosen]], marker="*", ms=16, color="gold", mec="black", ls="none",
                    label=f"chosen α={self.chosen_alpha:g} ({self.chosen_by})")
        ax.set_xlabel(f"in-distribution top-1 (%): {self.id_name}")
        ax.set_ylabel("out-of-distribution top-1 (%)")
        ax.set_title("WiSE-FT: robustness vs accuracy per mixing coefficient α")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
        return save_figure(fig, Path(out_png))

    def write(self, out_dir: str | Path, plots: bool = True) -> dict[str, Any]:
        """Write wise_ft.json, wise_ft.md and (with matplotlib) wise_ft.png to `out_dir`, each atomically.

        Returns {"json": path, "markdown": path, "plot": path or None, "notes": [...]}: without matplotlib the
        plot is skipped and a note says so (in the Markdown and the returned notes) instead of failing the run.
        """
        from ..atomic import atomic_write_bytes
        from ..jsonio import json_text

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        notes: list[str] = []
        png: Path | None = None
        if plots:
            try:
                png = self.plot(out / f"{REPORT_STEM}.png")
            except ImportError as exc:
                notes.append(f"Plot skipped: {exc}.")
        data = self.to_dict()
        data["notes"] = list(self.notes) + notes
        json_path, md_path = out / f"{REPORT_STEM}.json", out / f"{REPORT_STEM}.md"
        atomic_write_bytes(json_path, (json_text(data, indent=2) + "\n").encode())
        atomic_write_bytes(md_path, self.markdown(png.name if png else None, notes).encode())
        return {"json": json_path, "markdown": md_path, "plot": png, "notes": notes}


def _pct(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{100 * value:.2f}"


def _check_set(name: str, dataset: Any, classnames: tuple[str, ...]) -> None:
    own = getattr(dataset, "classnames", None)
    if own is not None and tuple(own) != classnames:
        raise ValueError(
            f"WiSE-FT set {name!r} has the classes {list(own)[:5]}..., not the in-distribution set's "
            f"{list(classnames)[:5]}...: every set is scored over the same classes; give sets of the same task"
        )
    labels = getattr(dataset, "labels", None)
    if labels is None:
        raise ValueError(f"WiSE-FT set {name!r} has no labels: it needs a ClassificationSet (or a view of one)")
    if len(labels) == 0:
        raise ValueError(f"WiSE-FT set {name!r} is empty")
    if labels and not 0 <= min(labels) <= max(labels) < len(classnames):
        raise ValueError(f"WiSE-FT set {name!r}: labels must lie in 0..{len(classnames) - 1}")


def _choose(rows: list[WiseFTRow], val_name: str | None) -> tuple[float, str, str]:
    """(alpha, chosen_by, rule sentence): best validation accuracy, ties to the alpha nearest 0.5; else 0.5."""
    if val_name is None:
        swept = any(r.alpha == PAPER_ALPHA for r in rows)
        rule = (
            "No validation set was given, so no alpha was chosen from data: every alpha is reported and the paper's "
            f"default alpha = {PAPER_ALPHA:g} is recommended"
            + ("" if swept else " (it was not in this sweep)")
            + ". Choosing by the test columns (ID or OOD) would overstate the result; pass validation data to choose."
        )
        return PAPER_ALPHA, "paper default", rule
    best = max(rows, key=lambda r: (r.val_accuracy, -abs(r.alpha - PAPER_ALPHA), -r.alpha))
    rule = (
        f"The alpha with the best top-1 on the validation set {val_name!r} (ties: the alpha nearest "
        f"{PAPER_ALPHA:g}); the ID and OOD test sets were not used to choose."
    )
    return best.alpha, "validation", rule


def _top1(model: CLIP, dataset: Any, weights: torch.Tensor, settings: EncodingSettings, model_hash: str):
    """(top-1 accuracy, images scored, images skipped) of zero-shot classification with class weights (D, C)."""
    from ..eval.features import encode_images
    from ..eval.metrics import topk_accuracy

    encoded = encode_images(
        model,
        dataset,
        get_preprocess(model),
        cache_dir=settings.cache_dir,
        model_hash=model_hash,
        batch_size=settings.batch_size,
        num_workers=settings.num_workers,
        device=settings.device,
        dtype=settings.dtype,
        progress=settings.progress,
    )
    labels = torch.tensor([dataset.labels[i] for i in encoded.indices], dtype=torch.long)  # (N,)
    logits = encoded.features @ weights  # (N, C); the logit scale changes no ranking
    return topk_accuracy(logits, labels, ks=(1,))["top1"], len(encoded.indices), len(encoded.skipped)


def wise_ft_report(
    zero_shot_model: CLIP,
    fine_tuned_model: CLIP,
    alphas: Sequence[float],
    id_set: Any,
    ood_sets: Mapping[str, Any],
    classnames: Sequence[str] | None = None,
    templates: Sequence[str] | None = None,
    *,
    val_set: Any | None = None,
    id_name: str | None = None,
    val_name: str = "val",
    model_names: tuple[str, str] = ("zero-shot", "fine-tuned"),
    settings: EncodingSettings | None = None,
) -> WiseFTReport:
    """Sweep WiSE-FT's alpha and score every mixed model on the ID set, each OOD set and (optionally) validation.

    Args:
        alphas: mixing coefficients in [0, 1] (0: the zero-shot model, 1: the fine-tuned one), no repeats.
        id_set: the in-distribution test set (a ClassificationSet or a view of one: a subset, a ShiftedView).
        ood_sets: name -> distribution-shifted test set over the same classes (e.g. eval.shifts.shift_dataset
            of the ID set, or another dataset of the same classes); at least one.
        classnames, templates: the zero-shot classifier's classes and prompt templates (default: the ID set's).
        val_set: in-distribution images neither model trained on; when given, the alpha with the best top-1 on
            it is chosen. The test sets are never used to choose.
        settings: how images are encoded (feature cache, batch size, device, autocast, progress).

    Returns a WiseFTReport with rows sorted by alpha; `report.write(folder)` saves JSON, Markdown and the plot.
    Raises IncompatibleModelsError when the two models are not one architecture, ValueError on bad arguments.
    """
    settings = settings or EncodingSettings()
    alphas = [_check_alpha(a) for a in alphas]
    if not alphas:
        raise ValueError("WiSE-FT report needs at least one alpha, e.g. 0 0.25 0.5 0.75 1")
    if len(set(alphas)) != len(alphas):
        raise ValueError(f"WiSE-FT alphas repeat a value: {alphas}; give each alpha once")
    if not ood_sets:
        raise ValueError("WiSE-FT report needs at least one out-of-distribution set (e.g. a shift of the ID set)")
    check_pair(zero_shot_model, fine_tuned_model)
    classnames = tuple(classnames if classnames is not None else id_set.classnames)
    templates = list(templates if templates is not None else id_set.templates)
    id_name = id_name or f"{id_set.name} {id_set.split}"
    sets: dict[str, Any] = {id_name: id_set, **{str(k): v for k, v in ood_sets.items()}}
    if val_set is not None:
        if val_name in sets:
            raise ValueError(f"WiSE-FT set names must differ; {val_name!r} is used twice")
        sets[val_name] = val_set
    if len(sets) != 1 + len(ood_sets) + (val_set is not None):
        raise ValueError(f"WiSE-FT set names must differ; the ID set's name {id_name!r} is also an OOD set's")
    for name, dataset in sets.items():
        _check_set(name, dataset, classnames)

    from ..eval.features import weights_hash
    from ..eval.zeroshot import encoding_context
    from ..zeroshot import build_class_weights

    tokenizer = get_tokenizer(zero_shot_model)
    images: dict[str, int] = {}
    skipped: dict[str, int] = {}
    bar = tqdm(total=len(alphas), desc="WiSE-FT alphas", unit="alpha", disable=not settings.progress)

    def evaluate(model: CLIP) -> dict[str, float]:
        with encoding_context(model, settings.device, settings.dtype):
            weights = build_class_weights(model, tokenizer, classnames, templates, settings.batch_size)  # (D, C)
        weights = weights.float().cpu()
        model_hash = weights_hash(model)
        scores = {}
        for name, dataset in sets.items():
            scores[name], images[name], skipped[name] = _top1(model, dataset, weights, settings, model_hash)
        bar.update(1)
        return scores

    try:
        swept = wise_ft_sweep(zero_shot_model, fine_tuned_model, alphas, evaluate)
    finally:
        bar.close()
    rows = sorted(
        (
            WiseFTRow(
                alpha=s["alpha"],
                id_accuracy=s[id_name],
                ood_accuracy={name: s[name] for name in ood_sets},
                val_accuracy=s[val_name] if val_set is not None else None,
            )
            for s in swept
        ),
        key=lambda r: r.alpha,
    )
    chosen, chosen_by, rule = _choose(rows, val_name if val_set is not None else None)
    return WiseFTReport(
        rows=tuple(rows),
        id_name=id_name,
        ood_names=tuple(str(k) for k in ood_sets),
        val_name=val_name if val_set is not None else None,
        images=images,
        skipped=skipped,
        chosen_alpha=chosen,
        chosen_by=chosen_by,
        rule=rule,
        model_names=model_names,
    )
