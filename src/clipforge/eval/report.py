"""Evaluation reports: results as JSON records and a Markdown table, and plots read at a glance.

results.json   one record per (model, dataset, split, task, metric); linear-probe and few-shot records carry
               `split_policy` (what trained, what was tested), `skipped_images` records list the skipped images
results.md     one table per task: a row per (model, dataset), a column per metric; then which split trained
               what, and the skipped images (path and reason)
plots/         per-class accuracy and confusion matrix (zero-shot), accuracy vs k (few-shot; adapt: a line per method),
               retrieval examples (a caption and its top images)
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_bytes
from ..jsonio import json_text
from ..plotting import new_figure, save_figure


def write_results(records: list[dict[str, Any]], out_dir: Path) -> tuple[Path, Path]:
    """Write results.json (every record) and results.md (a table) under `out_dir`; return both paths."""
    out_dir = Path(out_dir)
    json_path, md_path = out_dir / "results.json", out_dir / "results.md"
    atomic_write_bytes(json_path, (json_text(records, indent=2) + "\n").encode())
    atomic_write_bytes(md_path, markdown_table(records).encode())
    return json_path, md_path


def markdown_table(records: list[dict[str, Any]]) -> str:
    """One table per task; rows are (model, dataset, split), columns the task's metrics in first-seen order."""
    by_task: dict[str, list[dict]] = defaultdict(list)
    for record in records:
        by_task[record["task"]].append(record)
    parts = []
    for task, rows in by_task.items():
        metrics = list(dict.fromkeys(r["metric"] for r in rows))
        table: dict[tuple, dict[str, float]] = defaultdict(dict)
        for r in rows:
            table[(r["model"], r["dataset"], r["split"])][r["metric"]] = r["value"]
        lines = [
            f"## {task}",
            "",
            "| model | dataset | split | " + " | ".join(metrics) + " |",
            "|---|---|---|" + "---|" * len(metrics),
        ]
        for (model, dataset, split), values in table.items():
            cells = [_fmt(values.get(m)) for m in metrics]
            lines.append(f"| {model} | {dataset} | {split} | " + " | ".join(cells) + " |")
        parts.append("\n".join(lines))
    parts += [section for section in (_splits_section(records), _skipped_section(records)) if section]
    return "\n\n".join(parts) + "\n"


def _splits_section(records: list[dict[str, Any]]) -> str:
    """Which images trained and which were tested, once per (model, dataset, task) that learned from a split."""
    seen = dict.fromkeys(
        (r["model"], r["dataset"], r["task"], r["split_policy"]) for r in records if r.get("split_policy")
    )
    if not seen:
        return ""
    lines = ["## splits", ""]
    lines += [f"- {model} / {dataset} / {task}: {policy}" for model, dataset, task, policy in seen]
    return "\n".join(lines)


def _skipped_section(records: list[dict[str, Any]]) -> str:
    """The skipped images of each (dataset, split), listed once however many tasks and models read them."""
    groups: dict[tuple, list[str]] = {}
    for r in records:
        if r["metric"] != "skipped_images" or not r["value"]:
            continue
        listed = tuple((s["path"], s["reason"]) for s in r.get("skipped", ()))
        key = (r["dataset"], r["split"], int(r["value"]), listed, r.get("skipped_not_listed", 0))
        groups.setdefault(key, []).append(f"{r['model']} {r['task']}")
    if not groups:
        return ""
    lines = ["## skipped images"]
    for (dataset, split, count, listed, rest), readers in groups.items():
        lines += ["", f"{dataset} / {split}: {count} skipped (read by {', '.join(dict.fromkeys(readers))})", ""]
        lines += [f"- `{path}`: {reason}" for path, reason in listed]
        if rest:
            lines.append(f"- ... and {rest} more not listed")
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:.4f}" if isinstance(value, float) and not float(value).is_integer() else f"{value:g}"


def plot_per_class(classnames: list[str], per_class: list[float], title: str, out_png: Path) -> Path:
    """Bar chart of per-class accuracy, saved to `out_png`."""
    fig = new_figure(max(5.0, 0.45 * len(classnames) + 2), 3.6)
    ax = fig.add_subplot(1, 1, 1)
    ax.bar(range(len(classnames)), per_class, color="#4c72b0")
    ax.set_xticks(range(len(classnames)), classnames, rotation=60, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.grid(True, axis="y", alpha=0.3)
    return save_figure(fig, out_png)


def plot_confusion(classnames: list[str], confusion: list[list[int]], title: str, out_png: Path) -> Path:
    """Row-normalised confusion matrix (true class x predicted class), saved to `out_png`."""
    import numpy as np

    matrix = np.asarray(confusion, dtype=float)
    rows = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)  # each true class sums to 1
    size = max(4.5, 0.4 * len(classnames) + 2)
    fig = new_figure(size + 1, size)
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    ticks = range(len(classnames))
    ax.set_xticks(ticks, classnames, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(ticks, classnames, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, fraction=0.046)
    return save_figure(fig, out_png)


def plot_fewshot(curves: dict[str, dict[int, dict[str, float]]], title: str, out_png: Path) -> Path:
    """Few-shot accuracy against shots per class (mean and std over seeds), saved to `out_png`."""
    fig = new_figure(5.5, 3.8)
    ax = fig.add_subplot(1, 1, 1)
    for method, by_k in curves.items():
        ks = sorted(by_k)
        means = [by_k[k]["mean"] for k in ks]
        stds = [by_k[k]["std"] for k in ks]
        ax.errorbar(ks, means, yerr=stds, marker="o", capsize=3, label=method)
    ax.set_xscale("log", base=2)
    all_ks = sorted({k for by_k in curves.values() for k in by_k})
    ax.set_xticks(all_ks, [str(k) for k in all_ks])
    ax.set_xlabel("shots per class")
    ax.set_ylabel("top-1 accuracy")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    return save_figure(fig, out_png)


def plot_retrieval_examples(examples: list[dict[str, Any]], dataset: Any, title: str, out_png: Path) -> Path:
    """Each row: the caption, then its top images (the true image framed in green)."""
    cols = max(len(e["top"]) for e in examples)
    fig = new_figure(2.0 * cols, 2.3 * len(examples))
    fig.suptitle(title)
    for row, example in enumerate(examples):
        for col, index in enumerate(example["top"]):
            ax = fig.add_subplot(len(examples), cols, row * cols + col + 1)
            ax.imshow(dataset.load(index))
            ax.set_xticks([])
            ax.set_yticks([])
            if index == example["truth"]:
                for spine in ax.spines.values():
                    spine.set_edgecolor("green")
                    spine.set_linewidth(3)
            if col == 0:
                ax.set_title(example["query"][:60], fontsize=8, loc="left")
    return save_figure(fig, out_png)


def write_plots(result_artifacts: dict[str, Any], stem: str, plots_dir: Path) -> list[Path]:
    """The plots a task's artifacts allow, named `<stem>_<kind>.png`; matplotlib missing -> no plots."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return []
    written = []
    if "per_class" in result_artifacts:
        names = result_artifacts["classnames"]
        written.append(plot_per_class(names, result_artifacts["per_class"], stem, plots_dir / f"{stem}_per_class.png"))
        written.append(plot_confusion(names, result_artifacts["confusion"], stem, plots_dir / f"{stem}_confusion.png"))
    if "fewshot" in result_artifacts:
        written.append(plot_fewshot(result_artifacts["fewshot"], stem, plots_dir / f"{stem}_fewshot.png"))
    if "adapt" in result_artifacts:  # adapt: accuracy vs k, one line per method (mean and std over seeds)
        written.append(plot_fewshot(result_artifacts["adapt"], stem, plots_dir / f"{stem}_accuracy_vs_k.png"))
    if result_artifacts.get("examples"):
        written.append(
            plot_retrieval_examples(
                result_artifacts["examples"], result_artifacts["dataset"], stem, plots_dir / f"{stem}_retrieval.png"
            )
        )
    return written
