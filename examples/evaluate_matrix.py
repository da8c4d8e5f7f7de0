"""Evaluate several models on several datasets and tasks in one run, and print the matrix.

Shows `clipforge.eval`: each (task, dataset) pair is an `EvalRequest`; `run_evaluations` runs every request
for every model, caches image features (a second run re-encodes nothing) and writes `results.json`,
`results.md` and `plots/` under `--out`. Classification tasks (zeroshot, linear_probe, fewshot) run on
labelled datasets, retrieval on captioned ones; other pairs are skipped with a note. `--write-config` saves
the same matrix as a JSON file for `clipforge eval --config FILE`.

    python examples/evaluate_matrix.py --model tiny-vit --dataset folder=photos/ --task zeroshot linear_probe
    python examples/evaluate_matrix.py --model b32=ViT-B-32:openai --model mine=runs/finetune_csv/model \\
        --dataset fashion_mnist cifar10=/data/cifar csv=pairs.csv --task zeroshot fewshot retrieval --max-samples 2000

`--model` is `[LABEL=]SOURCE`: an architecture name (random weights, a plumbing check), `ARCH:TAG` (a pretrained
tag from `clipforge models --pretrained`), or a checkpoint file/folder or hub id. `--dataset` is `NAME[=ROOT]`
with NAME from `clipforge.eval.list_eval_datasets()` (folder, csv, wds, imagenet, cifar10, fashion_mnist, ...).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

import clipforge
from clipforge.eval import EvalRequest, list_eval_datasets, load_eval_dataset, run_evaluations

CLASSIFICATION_TASKS = ("zeroshot", "linear_probe", "fewshot")
TASKS = (*CLASSIFICATION_TASKS, "retrieval")
HEADLINE = {  # the one number per cell of the printed matrix; results.json has every metric
    "zeroshot": "top1",
    "linear_probe": "top1",
    "retrieval": "image_to_text_R@1",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", default=None, help="[LABEL=]ARCH, ARCH:TAG or a checkpoint")
    parser.add_argument("--dataset", nargs="+", required=True, help="NAME[=ROOT] ...")
    parser.add_argument("--task", nargs="+", default=["zeroshot"], choices=TASKS)
    parser.add_argument("--split", default="test", help="evaluated split")
    parser.add_argument("--train-split", default="train", help="split probes and few-shot classifiers learn from")
    parser.add_argument("--max-samples", type=int, default=None, help="a seeded subset of each split")
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 2, 4], help="few-shot shots per class")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="few-shot sampling seeds")
    parser.add_argument("--out", type=Path, default=Path("eval_results/matrix"), help="report folder")
    parser.add_argument("--cache-dir", type=Path, default=None, help="feature cache (default: OUT/cache)")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--write-config", type=Path, default=None, help="also save the matrix for clipforge eval")
    return parser.parse_args(argv)


def split_spec(spec: str) -> tuple[str, str]:
    label, sep, value = spec.partition("=")
    return (label, value) if sep else (spec, spec)


def load_model_spec(source: str) -> clipforge.CLIP:
    """ARCH (random weights, seeded), ARCH:TAG (pretrained tag) or a checkpoint path / hub id."""
    arch, _, tag = source.partition(":")
    if arch in clipforge.list_models():
        torch.manual_seed(0)  # the same random weights on every run, so the feature cache hits
        return clipforge.create_model(arch, pretrained=tag or None)
    return clipforge.load_model(source)


def model_entry(source: str) -> dict[str, str]:
    """The `clipforge eval --config` form of a model spec."""
    arch, _, tag = source.partition(":")
    if arch in clipforge.list_models():
        return {"model": arch, **({"pretrained": tag} if tag else {})}
    return {"pretrained": source}


def plan(args: argparse.Namespace) -> tuple[list[EvalRequest], list[str]]:
    """The requests that fit each dataset's kind (labels or captions), and a note for every pair skipped."""
    requests, skipped = [], []
    for spec in args.dataset:
        name, _, root = spec.partition("=")
        if name not in list_eval_datasets():
            raise SystemExit(f"error: --dataset {spec!r}: unknown dataset {name!r}; known: {list_eval_datasets()}")
        dataset = load_eval_dataset(name, root or None, args.split)
        labelled = hasattr(dataset, "labels")
        for task in args.task:
            if (task in CLASSIFICATION_TASKS) != labelled:
                kind = "class labels" if labelled else "captions"
                skipped.append(f"{task} on {name}: the dataset holds {kind}")
                continue
            requests.append(
                EvalRequest(
                    task,
                    name,
                    root=root or None,
                    split=args.split,
                    train_split=args.train_split,
                    ks=tuple(args.ks),
                    seeds=tuple(args.seeds),
                    max_samples=args.max_samples,
                )
            )
    return requests, skipped


def headline(task: str, ks: list[int]) -> str:
    return HEADLINE.get(task) or f"prototype_{max(ks)}shot_top1_mean"


def print_matrix(records: list[dict], requests: list[EvalRequest], ks: list[int]) -> None:
    """One row per model, one column per (dataset, task), each cell the task's headline metric."""
    values = {(r["model"], r["dataset"], r["task"], r["metric"]): r["value"] for r in records}
    models = list(dict.fromkeys(r["model"] for r in records))
    columns = [(q.dataset, q.task, headline(q.task, ks)) for q in requests]
    header = ["model"] + [f"{d} {t} {m}" for d, t, m in columns]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for model in models:
        cells = [f"{values.get((model, d, t, m), float('nan')):.4f}" for d, t, m in columns]
        print("| " + " | ".join([model, *cells]) + " |")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    model_specs = [split_spec(s) for s in (args.model or ["tiny-vit"])]
    requests, skipped = plan(args)
    for note in skipped:
        print(f"skipped {note}", file=sys.stderr)
    if not requests:
        print("error: no task fits the given datasets", file=sys.stderr)
        return 1
    if args.write_config:
        config = {
            "models": [{"name": label, **model_entry(source)} for label, source in model_specs],
            "evaluations": [
                {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(q).items() if v not in (None, {})}
                for q in requests
            ],
            "out": str(args.out),
        }
        args.write_config.write_text(json.dumps(config, indent=2) + "\n")
        print(f"wrote {args.write_config}: run it with  clipforge eval --config {args.write_config}", file=sys.stderr)

    models = {label: load_model_spec(source).eval() for label, source in model_specs}
    records = run_evaluations(
        models,
        requests,
        args.out,
        cache_dir=args.cache_dir or args.out / "cache",
        plots=not args.no_plots,
        progress=False,
    )
    print_matrix(records, requests, args.ks)
    print(f"all metrics: {args.out / 'results.md'} and {args.out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
