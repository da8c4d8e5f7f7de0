"""`clipforge eval`: zero-shot, retrieval, linear-probe, few-shot and adapter (`--task adapt`) evaluation with a report.

One model from --model/--pretrained, or a matrix of models x datasets from --config (JSON):

    {"models": [{"name": "b32", "model": "ViT-B-32", "pretrained": "openai"},
                {"name": "mine", "pretrained": "run/model"}],
     "evaluations": [{"task": "zeroshot", "dataset": "cifar10", "root": "/data"},
                     {"task": "linear_probe", "dataset": "fashion_mnist"}],
     "out": "report", "batch_size": 256}

Features are cached (keyed by the weights hash, the preprocessing and transform, the precision, the
dataset's files and their size, mtime and, for small sets, bytes), so re-running a report re-encodes
nothing and a rewritten image is re-encoded. Linear probes and few-shot classifiers never learn from
test images: a dataset without a separate train split gets a seeded carved split (--carve-test-fraction,
--split-seed; --no-carve refuses), and the report says which split trained what.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .argtypes import key_value, non_negative_int, open_fraction, positive_int
from .common import (
    DTYPES,
    add_common_arguments,
    add_model_arguments,
    add_progress_arguments,
    model_from_args,
    read_text_arg,
    show_progress,
)
from .errors import CliParser, UsageError, command

DEFAULT_CACHE = Path.home() / ".cache" / "clipforge" / "features"


def build_parser() -> argparse.ArgumentParser:
    """The `clipforge eval` argument parser (also the source of its --help)."""
    parser = CliParser(
        prog="clipforge eval",
        description="Evaluate CLIP models on local datasets and write results.json, results.md and plots/. "
        "Datasets: " + ", ".join(_dataset_names()),
        epilog="examples:\n"
        "  clipforge eval --pretrained runs/fashion_mnist/model --task zeroshot --dataset fashion_mnist\n"
        "  clipforge eval --model ViT-B-32 --pretrained openai --task zeroshot linear_probe --dataset cifar10 "
        "--root /data/cifar\n  clipforge eval --config matrix.json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", help="JSON file with models x evaluations (see module docs)")
    parser.add_argument(
        "--task",
        nargs="+",
        default=["zeroshot"],
        choices=["zeroshot", "retrieval", "linear_probe", "fewshot", "adapt"],
    )
    parser.add_argument("--dataset", nargs="+", default=[], help="dataset names (see above)")
    parser.add_argument("--root", default=None, help="dataset folder/file (None: built-in location)")
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        type=key_value,
        help="a dataset loader option, repeatable: e.g. --option path_column=filepath --option "
        "caption_column=title for a CSV (values are JSON when they parse, else strings)",
    )
    parser.add_argument("--split", default="test")
    parser.add_argument("--train-split", default="train", help="split probes and few-shot classifiers learn from")
    parser.add_argument("--templates", default=None, help="template set (imagenet, simple, photo) or file")
    parser.add_argument("--descriptions", default=None, help="CuPL-style JSON {class: [descriptions]}")
    parser.add_argument("--hierarchy", default=None, help="CHiLS JSON {class: [subclasses]}")
    parser.add_argument(
        "--ks", "--shots", dest="ks", type=positive_int, nargs="+", default=[1, 2, 4, 8, 16],
        help="few-shot / adapt shots per class",
    )
    parser.add_argument(
        "--seeds", type=non_negative_int, nargs="+", default=None,
        help="few-shot / adapt sampling seeds (default: 0 1 2 for fewshot, 1 2 3 for adapt, as CoOp)",
    )
    parser.add_argument(
        "--methods", type=_methods, default=None,
        help="adapt methods, comma-separated (e.g. tip,tip_f,gda; default: "
        "zeroshot,prototype,nn1,tip,gda,tip_f,linear_probe)",
    )
    parser.add_argument(
        "--views", type=non_negative_int, default=0, help="adapt: augmented views per support image (default 0)"
    )
    parser.add_argument("--max-samples", type=positive_int, default=None, help="evaluate a seeded subset of each split")
    parser.add_argument(
        "--carve-test-fraction",
        type=open_fraction,
        default=0.2,
        help="when the dataset has no separate --train-split (e.g. a folder without train/ and test/), probes and "
        "few-shot learn from a seeded stratified split carved from it: this share of each class is tested "
        "(default 0.2; the report says so)",
    )
    parser.add_argument(
        "--no-carve", action="store_true", help="refuse such a dataset for linear_probe/fewshot instead of carving"
    )
    parser.add_argument("--split-seed", type=non_negative_int, default=0, help="seed of the carved split (default 0)")
    parser.add_argument("--out", default="eval_results", help="report folder (default eval_results/)")
    parser.add_argument("--cache-dir", default=str(DEFAULT_CACHE), help="feature cache ('none' disables it)")
    parser.add_argument("--batch-size", type=positive_int, default=256, help="images per forward pass (default 256)")
    parser.add_argument("--workers", type=non_negative_int, default=2, help="image decoding worker processes")
    parser.add_argument("--no-plots", action="store_true")
    add_progress_arguments(parser)
    add_model_arguments(parser)
    add_common_arguments(parser)
    return parser


def _matrix(path: str, default_out: str):
    """(models, requests, out) from a --config JSON file; a malformed file is a usage error naming it."""
    from ..eval.tasks import EvalRequest
    from ..weights.loading import create_model, load_model

    try:
        spec = json.loads(read_text_arg(path, "--config"))
    except json.JSONDecodeError as exc:
        raise UsageError(f"--config {path}: not valid JSON ({exc})", "see `clipforge eval --help`") from exc
    try:
        models = {}
        for entry in spec["models"]:
            if entry.get("model"):
                models[entry["name"]] = create_model(entry["model"], pretrained=entry.get("pretrained"))
            else:
                models[entry["name"]] = load_model(entry["pretrained"])
        requests = [
            EvalRequest(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in e.items()})
            for e in spec["evaluations"]
        ]
    except (KeyError, TypeError, AttributeError) as exc:
        raise UsageError(
            f"--config {path}: malformed ({type(exc).__name__}: {exc})",
            'it needs {"models": [{"name", "model"/"pretrained"}], "evaluations": [{"task", "dataset"}]}',
        ) from exc
    return models, requests, spec.get("out", default_out)


def _methods(text: str) -> tuple[str, ...]:
    """--methods a,b,c -> ("a", "b", "c"), each a registered clipforge.adapt method."""
    from ..adapt import list_methods

    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in list_methods()]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown adapt method(s) {unknown or text!r}; choose from {', '.join(list_methods())}"
        )
    return names


def _dataset_names() -> list[str]:
    from ..eval.datasets import list_eval_datasets

    return list_eval_datasets()


@command("clipforge eval")
def main(argv: list[str] | None = None) -> int:
    """`clipforge eval`: run one model or a --config matrix and write the report; returns the exit code."""
    args = build_parser().parse_args(argv)
    from ..eval.runner import run_evaluations
    from ..eval.tasks import ADAPT_DEFAULT_SEEDS, EvalRequest

    if args.config:
        models, requests, out = _matrix(args.config, args.out)
    else:
        if not args.dataset:
            raise UsageError("give --dataset NAME (or --config FILE)", "see `clipforge eval --help` for the names")
        model, random_weights = model_from_args(args)
        name = args.model or Path(str(args.pretrained)).name
        models = {name + (" (random weights)" if random_weights else ""): model}
        requests = [
            EvalRequest(
                task,
                dataset,
                args.root,
                args.split,
                args.train_split,
                args.templates,
                args.descriptions,
                args.hierarchy,
                tuple(args.ks),
                tuple(args.seeds) if args.seeds else (ADAPT_DEFAULT_SEEDS if task == "adapt" else (0, 1, 2)),
                options=dict(args.option),
                max_samples=args.max_samples,
                carve_test_fraction=None if args.no_carve else args.carve_test_fraction,
                split_seed=args.split_seed,
                **({"methods": args.methods} if args.methods else {}),
                views=args.views,
            )
            for dataset in args.dataset
            for task in args.task
        ]
        out = args.out
    cache = None if args.cache_dir == "none" else args.cache_dir
    records = run_evaluations(
        models,
        requests,
        out,
        cache_dir=cache,
        batch_size=args.batch_size,
        num_workers=args.workers,
        dtype=DTYPES[args.precision] if args.precision != "fp32" else None,
        plots=not args.no_plots,
        progress=show_progress(args),
    )
    from ..eval.report import markdown_table

    print(markdown_table(records))
    print(f"report: {Path(out) / 'results.md'}  records: {Path(out) / 'results.json'}")
    return 0
