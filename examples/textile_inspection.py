"""Few-shot visual inspection of textile images: the workflow of Megahed et al. (2025) with `clipforge inspect`.

The simulated textile images (PyPI `conformal-clip-data`: 1,000 nominal, 500 local-defect and 500 global-defect
250 x 250 grey images) are sampled into a learning set of --per-class examples per class (the paper's 50) and a
held-out set of new parts. Then, as an engineer would at the line:

    clipforge inspect fit  OUT/examples/  --out OUT/inspector/   # 1-NN rule + conformal sets + report/
    clipforge inspect run  OUT/inspector/ OUT/new_parts/ --out OUT/decisions.jsonl

and this script scores the decisions against the true classes (accuracy, defect recall, conformal coverage and
set size). Run it:

    python examples/textile_inspection.py --out textile_demo/                          # tiny random model
    python examples/textile_inspection.py --pretrained runs/fashion_mnist/model --out textile_demo/
    python examples/textile_inspection.py --model ViT-B-32 --pretrained laion2b_s34b_b79k --method tip

Read OUT/inspector/report/report.md before trusting a model with the part: it holds the learning curve
(accuracy vs examples per class) that says whether more examples would help, and the ROC curve of
defect vs nominal. A model that cannot see the defect scores near the majority class; that is an answer too.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
from pathlib import Path

from clipforge.cli.main import main as clipforge

CLASSES = ("nominal", "local", "global")


def textile_root(given: str | None) -> Path:
    """The folder holding nominal/, local/ and global/ (the installed conformal-clip-data package by default)."""
    if given:
        return Path(given)
    from clipforge.eval.datasets.packaged import textile_root as installed

    found = installed()
    if not found:
        sys.exit("textile images not found: pip install conformal-clip-data, or pass --root FOLDER")
    return Path(found)


def sample(root: Path, out: Path, per_class: int, test_per_class: int, seed: int) -> dict[str, str]:
    """Copy per_class learning examples per class into OUT/examples/<class>/ and test_per_class others into
    OUT/new_parts/; returns {new part file name: true class}."""
    rng = random.Random(seed)
    truth: dict[str, str] = {}
    for name in CLASSES:
        files = sorted(p for p in (root / name).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        if len(files) < per_class + test_per_class:
            sys.exit(f"{root / name}: {len(files)} images, fewer than --per-class + --test-per-class")
        rng.shuffle(files)
        (out / "examples" / name).mkdir(parents=True)
        for path in files[:per_class]:
            shutil.copy2(path, out / "examples" / name / path.name)
        for path in files[per_class : per_class + test_per_class]:
            target = f"{name}_{path.name}"
            shutil.copy2(path, out / "new_parts" / target)
            truth[target] = name
    return truth


def score(decisions: Path, truth: dict[str, str]) -> dict[str, float]:
    """Accuracy, defect recall (a defect of either kind flagged as some defect), coverage and mean set size."""
    records = [json.loads(line) for line in decisions.read_text().splitlines() if line.strip()]
    rows = [r for r in records if r.get("decision")]
    correct = flagged = defects = covered = 0
    sizes = 0
    for row in rows:
        true = truth[Path(row["image"]).name]
        correct += row["decision"] == true
        if true != "nominal":
            defects += 1
            flagged += row["decision"] != "nominal"
        members = row["prediction_set"]
        covered += true in members
        sizes += len(members)
    n = max(len(rows), 1)
    return {
        "images": len(rows),
        "accuracy": correct / n,
        "defect_recall": flagged / max(defects, 1),
        "coverage": covered / n,
        "mean_set_size": sizes / n,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="textile_demo", help="folder for the samples, inspector and decisions")
    parser.add_argument("--root", default=None, help="textile folder with nominal/ local/ global/ (default: installed)")
    parser.add_argument("--per-class", type=int, default=50, help="learning examples per class (the paper's 50)")
    parser.add_argument("--test-per-class", type=int, default=100, help="held-out new parts per class")
    parser.add_argument("--method", default="nn1", help="adapter (default nn1: the paper's 1-NN rule)")
    parser.add_argument("--alpha", default="0.1", help="conformal miscoverage rate")
    parser.add_argument("--model", default=None, help="architecture (default: the checkpoint's own, else tiny-vit)")
    parser.add_argument("--pretrained", default=None, help="tag, checkpoint or folder (default: random weights)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        sys.exit(f"{out} is not empty: give a new --out folder")
    (out / "new_parts").mkdir(parents=True, exist_ok=True)
    truth = sample(textile_root(args.root), out, args.per_class, args.test_per_class, args.seed)
    model = ["--model", args.model or "tiny-vit"] if args.model or not args.pretrained else []
    model += ["--pretrained", args.pretrained] if args.pretrained else []
    fit = ["inspect", "fit", str(out / "examples"), "--out", str(out / "inspector"), "--method", args.method]
    if clipforge([*fit, "--alpha", args.alpha, "--seed", str(args.seed), "--quiet", *model]) != 0:
        return 1
    decisions = out / "decisions.jsonl"
    if clipforge(["inspect", "run", str(out / "inspector"), str(out / "new_parts"), "--out", str(decisions), "-q"]):
        return 1
    figures = score(decisions, truth)
    print(f"learning set: {args.per_class} per class; new parts: {figures['images']}; method {args.method}")
    print(
        f"accuracy {figures['accuracy']:.3f} (chance: {1 / 3:.3f}), defect recall {figures['defect_recall']:.3f}, "
        f"conformal coverage {figures['coverage']:.3f} at alpha {args.alpha}, "
        f"mean set size {figures['mean_set_size']:.2f}"
    )
    print(f"report: {out / 'inspector' / 'report'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
