"""Quickstart: train a small CLIP on Fashion-MNIST, then use it.

1. trains the packaged recipe `fashion_mnist` (what `clipforge train fashion_mnist` runs; a few minutes
   on two CPU cores, with a progress bar) to >= 85% zero-shot top-1 on the 10,000-image test split
   (prompts only, templates never seen in training);
2. loads the saved model back with `clipforge.load_model` and classifies a few test images;
3. leaves the model, metrics.jsonl and the training-curve plot in runs/fashion_mnist/.
Rerunning resumes (or, when finished, only re-evaluates and re-saves). Extra arguments are config
overrides, e.g. `--schedule.epochs=1`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

import clipforge
from clipforge.data import FASHION_TEST_TEMPLATES, fashion_mnist_eval_set
from clipforge.recipes import load_recipe
from clipforge.train.loop import train
from clipforge.train.overrides import apply_overrides


def main(argv: list[str]) -> int:
    cfg = apply_overrides(load_recipe("fashion_mnist"), argv)
    print(f"training {cfg.model.name} (28 px, patch 7) on Fashion-MNIST -> {cfg.output_dir}")
    result = train(cfg)
    top1 = result.final_metrics.get("zeroshot_top1", float("nan"))
    top5 = result.final_metrics.get("zeroshot_top5", float("nan"))
    print(f"\nzero-shot top-1 on the 10,000 test images: {top1:.2%} (top-5 {top5:.2%})")

    model = clipforge.load_model(result.model_dir)  # the saved model loads back like any checkpoint
    images, labels, classnames = fashion_mnist_eval_set(model.config.preprocess)
    classifier = clipforge.ZeroShotClassifier(model, clipforge.get_tokenizer(model), classnames, FASHION_TEST_TEMPLATES)
    picks = torch.arange(0, 10_000, 1_250)[:8]
    print("\nexample predictions (test images):")
    for index, ranked in zip(picks.tolist(), classifier.top_k(images[picks], k=2)):
        mark = "ok " if ranked[0][0] == classnames[int(labels[index])] else "   "
        guesses = ", ".join(f"{name} {p:.2f}" for name, p in ranked)
        print(f"  {mark} #{index:<5} true: {classnames[int(labels[index])]:<12} predicted: {guesses}")
    out = Path(cfg.output_dir)
    print(f"\nmodel: {result.model_dir}  (clipforge.load_model('{result.model_dir}'))")
    print(f"curves: {out / 'curves.png'}   metrics: {out / 'metrics.jsonl'}")
    return 0 if top1 >= 0.85 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
