"""The inspection report: can CLIP inspect this part? Numbers on the held-out calibration split, Markdown + PNGs.

Accuracy and the confusion matrix; per defect class, one-vs-rest sensitivity (defects of that kind caught) and
specificity (other images not called that kind), with the nominal class as the negative when one is named
nominal/good/ok; the ROC curve and AUC of "defect vs nominal" scored by 1 - p(nominal); the empirical coverage and
mean set size of conformal sets against alpha; and a learning curve (accuracy against examples per class, the
adapter refitted on seeded subsets of the learning set), which tells an engineer whether more examples would help.

Coverage vs alpha is measured honestly: calibrating and scoring on the same images would overstate it, so the
calibration split is halved at random `repeats` times (seeded), thresholds fitted on one half, coverage measured
on the other, and the means reported. matplotlib is optional: without it the report has the tables only.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from ...adapt import LabelledFeatures
from ...adapt import fit as adapt_fit
from ...atomic import atomic_write_bytes
from ...jsonio import json_text
from .conformal import ConformalCalibrator, coverage_report

ALPHAS = (0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3)
CURVE_SIZES = (1, 2, 5, 10, 20, 50, 100, 200, 500)


def confusion_matrix(labels: torch.Tensor, preds: torch.Tensor, num_classes: int) -> list[list[int]]:
    """C x C counts: row = true class, column = predicted class."""
    flat = torch.bincount(labels.long() * num_classes + preds.long(), minlength=num_classes * num_classes)
    return flat.view(num_classes, num_classes).tolist()


def one_vs_rest(confusion: list[list[int]], positive: int, negatives: list[int] | None = None) -> dict[str, Any]:
    """Sensitivity (recall of class `positive`) and specificity (share of the `negatives` rows, all other classes by
    default, not predicted `positive`); None where a denominator is 0."""
    c = len(confusion)
    negatives = [k for k in range(c) if k != positive] if negatives is None else negatives
    tp = confusion[positive][positive]
    pos = sum(confusion[positive])
    fp = sum(confusion[k][positive] for k in negatives)
    neg = sum(sum(confusion[k]) for k in negatives)
    return {
        "sensitivity": tp / pos if pos else None,
        "specificity": (neg - fp) / neg if neg else None,
        "positives": pos,
        "negatives": neg,
    }


def roc_curve(scores: torch.Tensor, positive: torch.Tensor) -> tuple[list[float], list[float], float | None]:
    """(false positive rates, true positive rates, AUC) of `scores` (N,) for the bool `positive` (N,); thresholds at
    every distinct score (ties move together). AUC by the trapezoid rule, which equals the Mann-Whitney probability
    P(score_pos > score_neg) + P(tie) / 2. AUC None (and an empty curve) when one side is empty."""
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return [], [], None
    s = scores.double()
    order = torch.argsort(s, descending=True)
    s, pos = s[order], positive[order]
    tps, fps = torch.cumsum(pos.double(), 0), torch.cumsum((~pos).double(), 0)
    last = torch.ones_like(s, dtype=torch.bool)
    last[:-1] = s[1:] != s[:-1]  # the end of each group of equal scores
    tpr = torch.cat([torch.zeros(1, dtype=torch.float64), tps[last] / n_pos])
    fpr = torch.cat([torch.zeros(1, dtype=torch.float64), fps[last] / n_neg])
    auc = float(torch.trapezoid(tpr, fpr))
    return fpr.tolist(), tpr.tolist(), auc


def coverage_curve(
    probs: torch.Tensor,
    labels: torch.Tensor,
    alphas: tuple[float, ...] = ALPHAS,
    *,
    mode: str = "class",
    repeats: int = 20,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Per alpha: mean coverage and set size over `repeats` random halvings of (probs (n, C), labels (n,))
    (thresholds on one half, coverage_report on the other). Starved thresholds (+inf, full sets) are part of the
    honest answer, so their warnings are silenced here and the sets simply grow."""
    n = probs.shape[0]
    generator = torch.Generator().manual_seed(seed)
    splits = [torch.randperm(n, generator=generator) for _ in range(repeats)]
    rows = []
    for alpha in alphas:
        covs, sizes = [], []
        for perm in splits:
            cal, test = perm[: n // 2], perm[n // 2 :]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                predictor = ConformalCalibrator.fit(probs[cal], labels[cal], alpha, mode=mode)
            report = coverage_report(predictor.predict_sets(probs[test]), labels[test])
            covs.append(report["coverage"])
            sizes.append(report["mean_set_size"])
        rows.append(
            {
                "alpha": alpha,
                "target": 1.0 - alpha,
                "coverage": sum(covs) / len(covs),
                "mean_set_size": sum(sizes) / len(sizes),
            }
        )
    return rows


def _subset(train: LabelledFeatures, per_class: int, generator: torch.Generator) -> LabelledFeatures:
    """`per_class` seeded random examples of each class (all of a class that has fewer)."""
    keep = []
    for c in range(train.num_classes):
        members = torch.nonzero(train.labels == c).flatten()
        keep.append(members[torch.randperm(members.numel(), generator=generator)[:per_class]])
    idx = torch.sort(torch.cat(keep)).values
    return LabelledFeatures(train.features[idx], train.labels[idx], train.classnames)


def learning_curve(inspector: Any, sizes: tuple[int, ...] = CURVE_SIZES, repeats: int = 3) -> list[dict[str, Any]]:
    """Calibration accuracy of the inspector's method refitted on k examples per class, for each k in `sizes` up to
    the largest class's support count (that count itself last): mean and min/max over `repeats` seeded draws."""
    counts = torch.bincount(inspector.support.labels, minlength=len(inspector.classnames))
    largest = int(counts.max())
    ks = sorted({k for k in sizes if k < largest} | {largest})
    ctx, cal = inspector.context(), inspector.calibration
    rows = []
    for k in ks:
        accs = []
        for r in range(repeats if k < largest else 1):
            generator = torch.Generator().manual_seed(inspector.config.seed * 1000 + r)
            subset = _subset(inspector.support, k, generator)
            adapter = adapt_fit(inspector.config.method, ctx, subset, None, **inspector.config.hparams)
            with torch.no_grad():
                accs.append(float((adapter.predict(cal.features) == cal.labels).double().mean()))
        rows.append({"per_class": k, "accuracy": sum(accs) / len(accs), "min": min(accs), "max": max(accs)})
    return rows


def inspection_metrics(inspector: Any, *, repeats: int = 20, curve_repeats: int = 3) -> dict[str, Any]:
    """Every number of the report, JSON-able, measured on the inspector's held-out calibration split."""
    cal = inspector.calibration
    names = list(inspector.classnames)
    c = len(names)
    probs = inspector.probabilities(cal.features).double()  # (n, C)
    preds = probs.argmax(dim=-1)
    confusion = confusion_matrix(cal.labels, preds, c)
    n = len(cal)
    accuracy = sum(confusion[k][k] for k in range(c)) / n
    nominal = inspector.nominal
    defects = [k for k in range(c) if k != nominal]
    negatives = [nominal] if nominal is not None else None
    per_class = {names[k]: one_vs_rest(confusion, k, negatives) for k in defects}
    roc: dict[str, Any] | None = None
    if nominal is not None:
        fpr, tpr, auc = roc_curve(1.0 - probs[:, nominal], cal.labels != nominal)
        roc = {"fpr": fpr, "tpr": tpr, "auc": auc, "score": f"1 - p({names[nominal]})"}
    sets = inspector.conformal.predict_sets(probs)
    return {
        "classes": names,
        "nominal": None if nominal is None else names[nominal],
        "method": inspector.config.method,
        "hparams": inspector.adapter.hparams,
        "support_per_class": torch.bincount(inspector.support.labels, minlength=c).tolist(),
        "calibration_per_class": torch.bincount(cal.labels, minlength=c).tolist(),
        "n": n,
        "accuracy": accuracy,
        "confusion": confusion,
        "per_class": per_class,
        "roc": roc,
        "conformal": {
            "alpha": inspector.conformal.alpha,
            "mode": inspector.conformal.mode,
            "in_sample": coverage_report(sets, cal.labels),
        },
        "coverage_vs_alpha": coverage_curve(
            probs, cal.labels, mode=inspector.conformal.mode, repeats=repeats, seed=inspector.config.seed
        ),
        "learning_curve": learning_curve(inspector, repeats=curve_repeats),
    }


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _plots(metrics: dict[str, Any], folder: Path) -> dict[str, str]:
    """PNG name per figure; {} without matplotlib."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return {}
    from ...eval.report import plot_confusion
    from ...plotting import new_figure, save_figure

    out = {"confusion": "confusion.png"}
    plot_confusion(metrics["classes"], metrics["confusion"], "confusion (calibration split)", folder / out["confusion"])
    if metrics["roc"] and metrics["roc"]["auc"] is not None:
        fig = new_figure(4.2, 4.0)
        ax = fig.add_subplot(1, 1, 1)
        label = f"AUC {metrics['roc']['auc']:.3f}"
        ax.plot(metrics["roc"]["fpr"], metrics["roc"]["tpr"], label=label)
        ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8)
        ax.set_xlabel("false positive rate (nominal called defect)")
        ax.set_ylabel("true positive rate (defects caught)")
        ax.set_title("defect vs nominal ROC")
        ax.legend(loc="lower right")
        out["roc"] = "roc.png"
        save_figure(fig, folder / out["roc"])
    rows = metrics["coverage_vs_alpha"]
    fig = new_figure(7.5, 3.4)
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    alphas = [r["alpha"] for r in rows]
    left.plot(alphas, [r["coverage"] for r in rows], "o-", label="empirical")
    left.plot(alphas, [r["target"] for r in rows], "--", c="grey", label="1 - alpha")
    left.set_xlabel("alpha")
    left.set_ylabel("coverage")
    left.legend()
    right.plot(alphas, [r["mean_set_size"] for r in rows], "o-")
    right.set_xlabel("alpha")
    right.set_ylabel("mean set size")
    out["coverage"] = "coverage.png"
    save_figure(fig, folder / out["coverage"])
    curve = metrics["learning_curve"]
    fig = new_figure(5.0, 3.6)
    ax = fig.add_subplot(1, 1, 1)
    ks = [r["per_class"] for r in curve]
    ax.plot(ks, [r["accuracy"] for r in curve], "o-")
    ax.fill_between(ks, [r["min"] for r in curve], [r["max"] for r in curve], alpha=0.2)
    ax.set_xscale("log")
    ax.set_xticks(ks, [str(k) for k in ks])  # the sizes measured, as plain numbers (not 2x10^0)
    ax.minorticks_off()
    ax.set_xlabel("examples per class")
    ax.set_ylabel("accuracy (calibration split)")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"learning curve ({metrics['method']})")
    out["learning_curve"] = "learning_curve.png"
    save_figure(fig, folder / out["learning_curve"])
    return out


def markdown(metrics: dict[str, Any], plots: dict[str, str]) -> str:
    """The report's Markdown text."""
    names = metrics["classes"]
    conformal = metrics["conformal"]
    lines = [
        "# Inspection report",
        "",
        f"Method `{metrics['method']}`; classes {', '.join(names)}"
        + (f" (nominal: {metrics['nominal']})" if metrics["nominal"] else " (no class named nominal/good/ok)")
        + f". Learning set per class {metrics['support_per_class']}, calibration per class "
        f"{metrics['calibration_per_class']}. All numbers are on the held-out calibration split (n = {metrics['n']}).",
        "",
        f"**Accuracy: {metrics['accuracy']:.3f}**",
        "",
        "| defect class | sensitivity | specificity | positives | negatives |",
        "|---|---|---|---|---|",
    ]
    for name, row in metrics["per_class"].items():
        lines.append(
            f"| {name} | {_fmt(row['sensitivity'])} | {_fmt(row['specificity'])} | {row['positives']} | "
            f"{row['negatives']} |"
        )
    lines += ["", "Confusion matrix (rows: true, columns: predicted):", ""]
    lines.append("| true \\ predicted | " + " | ".join(names) + " |")
    lines.append("|---" * (len(names) + 1) + "|")
    for name, row in zip(names, metrics["confusion"]):
        lines.append(f"| {name} | " + " | ".join(str(v) for v in row) + " |")
    if "confusion" in plots:
        lines += ["", f"![confusion]({plots['confusion']})"]
    if metrics["roc"] is not None:
        lines += ["", f"Defect vs nominal ROC AUC (score {metrics['roc']['score']}): {_fmt(metrics['roc']['auc'])}"]
        if "roc" in plots:
            lines += ["", f"![roc]({plots['roc']})"]
    in_sample = conformal["in_sample"]
    lines += [
        "",
        f"Conformal prediction sets ({conformal['mode']} thresholds, alpha {conformal['alpha']}): on the calibration "
        f"split itself coverage {in_sample['coverage']:.3f}, mean set size {in_sample['mean_set_size']:.2f}. "
        "Held-out estimate against alpha (calibrate on half, measure on the other half, mean over random halvings):",
        "",
        "| alpha | target | coverage | mean set size |",
        "|---|---|---|---|",
    ]
    for row in metrics["coverage_vs_alpha"]:
        lines.append(f"| {row['alpha']:g} | {row['target']:.2f} | {row['coverage']:.3f} | {row['mean_set_size']:.2f} |")
    if "coverage" in plots:
        lines += ["", f"![coverage]({plots['coverage']})"]
    lines += ["", "Learning curve (accuracy against examples per class):", "", "| per class | accuracy | min | max |"]
    lines.append("|---|---|---|---|")
    for row in metrics["learning_curve"]:
        lines.append(f"| {row['per_class']} | {row['accuracy']:.3f} | {row['min']:.3f} | {row['max']:.3f} |")
    if "learning_curve" in plots:
        lines += ["", f"![learning curve]({plots['learning_curve']})"]
    if not plots:
        lines += ["", "(no figures: install matplotlib, `pip install clipforge[plots]`)"]
    return "\n".join(lines) + "\n"


def write_report(inspector: Any, folder: str | Path, *, repeats: int = 20, curve_repeats: int = 3) -> Path:
    """Write report.md, report.json and the PNGs into `folder`; returns the Markdown path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    metrics = inspection_metrics(inspector, repeats=repeats, curve_repeats=curve_repeats)
    plots = _plots(metrics, folder)
    atomic_write_bytes(folder / "report.json", (json_text(metrics, indent=2) + "\n").encode())
    atomic_write_bytes(folder / "report.md", markdown(metrics, plots).encode())
    return folder / "report.md"
