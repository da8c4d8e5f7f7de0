"""`clipforge eval`: zero-shot, retrieval, linear-probe, few-shot and adapter (`--task adapt`) evaluation with a report.

`--task wise_ft` sweeps WiSE-FT's alpha between a zero-shot model (--zero-shot/--pretrained) and its fine-tuned
copy (--fine-tuned) on --dataset and shifted copies of it (--ood), writing wise_ft.json/.md/.png (adapt.wise_ft_report).

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

from .argtypes import key_value, non_negative_int, open_fraction, positive_int, unit_interval
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
        choices=["zeroshot", "retrieval", "linear_probe", "fewshot", "adapt", "wise_ft"],
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
    _add_wise_ft_arguments(parser)
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


def _ood_spec(text: str) -> tuple[str | None, str | None]:
    """--ood SHIFT | DATASET:SHIFT | DATASET -> (dataset or None for --dataset, shift or None)."""
    from ..eval.shifts import list_shifts

    dataset, sep, shift = text.rpartition(":") if ":" in text else ("", "", text)
    if not sep and text not in list_shifts():
        if text not in _dataset_names():
            raise argparse.ArgumentTypeError(
                f"{text!r} is neither a distribution shift ({', '.join(list_shifts())}) nor an evaluation dataset "
                "(forms: SHIFT, DATASET:SHIFT or DATASET)"
            )
        dataset, shift = text, ""
    if dataset and dataset not in _dataset_names():
        raise argparse.ArgumentTypeError(f"unknown evaluation dataset {dataset!r} in {text!r}")
    if shift and shift not in list_shifts():
        raise argparse.ArgumentTypeError(
            f"unknown distribution shift {shift!r}; known shifts: {', '.join(list_shifts())} "
            "(forms: SHIFT, DATASET:SHIFT or DATASET)"
        )
    return dataset or None, shift or None


def _add_wise_ft_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "WiSE-FT (--task wise_ft)",
        "WiSE-FT (Wortsman et al. 2022) mixes a zero-shot model and its fine-tuned copy in weight space, "
        "(1 - alpha) * zero-shot + alpha * fine-tuned, which keeps most of fine-tuning's accuracy gain and "
        "most of the zero-shot model's robustness to distribution shift. --task wise_ft scores each alpha by "
        "zero-shot classification on --dataset (in-distribution, ID) and on shifted copies of it (--ood: "
        "out-of-distribution, OOD), and writes OUT/wise_ft.json, wise_ft.md and wise_ft.png (OOD vs ID "
        "accuracy, one point per alpha, as the paper's Figure 1). Read the table for the alpha whose ID and "
        "mean-OOD accuracy you prefer: points above the line from zero-shot to fine-tuned beat both. Alpha is "
        "chosen on --val-split (ID images the fine-tuned model did not train on) when given, else the paper's "
        "0.5 is recommended; the test sets never choose. Example: clipforge eval --task wise_ft --zero-shot "
        "base/model --fine-tuned run/model --dataset fashion_mnist --ood invert rotate90 noise --out report/",
    )
    group.add_argument(
        "--zero-shot", default=None, metavar="PATH", help="the zero-shot model (same as --pretrained; either one)"
    )
    group.add_argument(
        "--fine-tuned", default=None, metavar="PATH", help="the fine-tuned model: a checkpoint file or folder"
    )
    group.add_argument(
        "--alphas", type=unit_interval, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0],
        help="mixing coefficients in [0, 1] (default 0 0.25 0.5 0.75 1)",
    )
    group.add_argument(
        "--ood", type=_ood_spec, nargs="+", default=None, metavar="SPEC",
        help="out-of-distribution sets: a shift of --dataset (invert, rotate90, noise, blur, lowcontrast), "
        "DATASET:SHIFT, or another DATASET of the same classes (default: every shift of --dataset)",
    )
    group.add_argument(
        "--val-split", default=None,
        help="a split of --dataset to choose alpha on (never --split, nor data the fine-tuned model trained on)",
    )


def _wise_ft(args: argparse.Namespace) -> int:
    """--task wise_ft: load both models, the ID / OOD / validation sets, sweep alpha, write and print the report."""
    from ..adapt.wise_ft_report import EncodingSettings, IncompatibleModelsError, check_pair, wise_ft_report
    from ..eval.datasets import load_eval_dataset
    from ..eval.shifts import list_shifts, shift_dataset
    from ..eval.tasks import SubsetView
    from ..zeroshot import get_templates
    from .errors import MODEL_ERROR, CliError

    if len(args.task) != 1 or args.config:
        raise UsageError("--task wise_ft runs alone (no other --task, no --config)", "run the other tasks separately")
    if len(args.dataset) != 1:
        raise UsageError("--task wise_ft needs exactly one --dataset (the in-distribution set)", "")
    if args.fine_tuned is None:
        raise UsageError("--task wise_ft needs --fine-tuned PATH", "and --zero-shot PATH (or --pretrained)")
    if args.zero_shot is not None:
        if args.pretrained is not None and args.pretrained != args.zero_shot:
            raise UsageError("give the zero-shot model once: --zero-shot or --pretrained", "")
        args.pretrained = args.zero_shot
    if args.val_split is not None and args.val_split == args.split:
        raise UsageError(f"--val-split {args.val_split} is the evaluated --split", "choose alpha on other data")
    fine_args = argparse.Namespace(**{**vars(args), "pretrained": args.fine_tuned})
    zero_shot, _ = model_from_args(args)
    fine_tuned, _ = model_from_args(fine_args)
    try:
        check_pair(zero_shot, fine_tuned)
    except IncompatibleModelsError as exc:
        raise CliError(str(exc), "give the zero-shot model and a fine-tuned copy of it", MODEL_ERROR) from exc

    dataset = args.dataset[0]

    def load(name: str, split: str, options: dict):
        loaded = load_eval_dataset(name, args.root if name == dataset else None, split, **options)
        if args.max_samples is not None and len(loaded) > args.max_samples:
            loaded = SubsetView(loaded, args.max_samples)
        return loaded

    options = dict(args.option)
    id_set = load(dataset, args.split, options)
    ood_sets = {}
    for name, shift in args.ood or [(None, s) for s in list_shifts()]:
        base = id_set if name is None else load(name, args.split, options if name == dataset else {})
        label = shift if name is None else f"{name}:{shift}" if shift else name
        ood_sets[label] = shift_dataset(base, shift)
    val_set = load(dataset, args.val_split, options) if args.val_split else None
    report = wise_ft_report(
        zero_shot,
        fine_tuned,
        args.alphas,
        id_set,
        ood_sets,
        templates=get_templates(args.templates) if args.templates else None,
        val_set=val_set,
        id_name=f"{dataset} {args.split}",
        val_name=f"{dataset} {args.val_split}",
        model_names=(Path(str(args.pretrained)).name + " (zero-shot)", Path(args.fine_tuned).name + " (fine-tuned)"),
        settings=EncodingSettings(
            cache_dir=None if args.cache_dir == "none" else args.cache_dir,
            batch_size=args.batch_size,
            num_workers=args.workers,
            device=args.device,
            dtype=DTYPES[args.precision] if args.precision != "fp32" else None,
            progress=show_progress(args),
        ),
    )
    written = report.write(args.out, plots=not args.no_plots)
    print(report.markdown(notes=written["notes"]), end="")
    shown = [str(written["markdown"]), str(written["json"])] + ([str(written["plot"])] if written["plot"] else [])
    print("report: " + "  ".join(shown))
    return 0


def _dataset_names() -> list[str]:
    from ..eval.datasets import list_eval_datasets

    return list_eval_datasets()


@command("clipforge eval")
def main(argv: list[str] | None = None) -> int:
    """`clipforge eval`: run one model or a --config matrix and write the report; returns the exit code."""
    args = build_parser().parse_args(argv)
    if "wise_ft" in args.task:
        return _wise_ft(args)
    if args.fine_tuned or args.zero_shot or args.ood or args.val_split:
        raise UsageError("--zero-shot, --fine-tuned, --ood and --val-split belong to --task wise_ft", "")
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
