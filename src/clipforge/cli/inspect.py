"""`clipforge inspect`: few-shot visual inspection with guaranteed-coverage prediction sets.

    clipforge inspect fit EXAMPLES_DIR --out INSPECTOR_DIR --model M [--pretrained P] [--method nn1] [--alpha 0.1]
    clipforge inspect run INSPECTOR_DIR IMAGES_OR_FOLDERS... [--out results.jsonl | results.csv]

`fit` learns from EXAMPLES_DIR/CLASS/*.png (one folder per class: nominal and each defect kind), holds out a
calibration split, and writes the inspector plus a report (INSPECTOR_DIR/report/report.md). `run` writes one record
per image (decision, confidence, prediction set, nearest learning-set examples): JSON lines, or CSV when --out ends
in .csv. Unreadable images are skipped and reported on stderr (a JSONL record with "error").
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import warnings
from pathlib import Path

from .argtypes import key_value, open_fraction, positive_int
from .common import (
    add_common_arguments,
    add_model_arguments,
    json_text,
    log,
    model_from_args,
    read_text_arg,
    report_skipped,
)
from .errors import INPUT_NOT_FOUND, CliError, CliParser, UsageError, command


def build_parser() -> argparse.ArgumentParser:
    """The `clipforge inspect` parser with its `fit` and `run` actions."""
    parser = CliParser(
        prog="clipforge inspect",
        description="Few-shot visual inspection: learn from example images per class, then decide on new images "
        "with a confidence and a conformal prediction set.",
    )
    actions = parser.add_subparsers(dest="action", required=True, parser_class=CliParser)
    fit = actions.add_parser("fit", help="learn an inspector from EXAMPLES_DIR/CLASS/*.png and write a report")
    fit.add_argument("examples", help="folder with one sub-folder of example images per class")
    fit.add_argument("--out", required=True, help="folder to write the inspector (and report/) into")
    fit.add_argument("--method", default="nn1", help="adapter (clipforge.adapt method; default nn1, Megahed et al.)")
    fit.add_argument("--alpha", type=open_fraction, default=0.1, help="conformal miscoverage rate (default 0.1)")
    fit.add_argument("--mode", choices=["class", "global"], default="class", help="conformal thresholds (class)")
    fit.add_argument("--calib-fraction", type=open_fraction, default=0.3, help="share held out per class (0.3)")
    fit.add_argument("--seed", type=int, default=0, help="seed of the calibration split and learning curve")
    fit.add_argument("--descriptions", default=None, help="JSON file {class folder: text description or [texts]}")
    fit.add_argument("--hparam", type=key_value, action="append", default=[], metavar="KEY=VALUE",
                     help="adapter hyper-parameter (repeatable), e.g. --hparam temperature=0.02")
    fit.add_argument("--no-report", action="store_true", help="do not write the report")
    fit.add_argument("--batch-size", type=positive_int, default=32, help="images per forward pass (default 32)")
    add_model_arguments(fit)
    add_common_arguments(fit)
    run = actions.add_parser("run", help="inspect images with a fitted inspector")
    run.add_argument("inspector", help="folder written by `clipforge inspect fit --out`")
    run.add_argument("images", nargs="+", help="image files or folders of images")
    run.add_argument("--out", default=None, help="write results here (.csv: CSV, else JSON lines); default stdout")
    run.add_argument("--batch-size", type=positive_int, default=32, help="images per forward pass (default 32)")
    run.add_argument("--device", default="auto", help="torch device: auto (default), cpu, cuda[:N], mps")
    add_common_arguments(run)
    return parser


def _descriptions(path: str | None) -> dict | None:
    if path is None:
        return None
    try:
        return json.loads(read_text_arg(path, "--descriptions"))
    except json.JSONDecodeError as exc:
        hint = 'write {"class": "description", ...}'
        raise UsageError(f"--descriptions {path}: not valid JSON ({exc})", hint) from exc


def _fit(args: argparse.Namespace) -> int:
    from ..adapt import list_methods
    from ..apps.inspect.inspector import fit_inspector
    from ..apps.inspect.report import write_report

    if args.method not in list_methods():
        methods = ", ".join(list_methods())
        raise UsageError(f"--method {args.method!r} is not an adapt method", f"choose one of {methods}")
    if not Path(args.examples).is_dir():
        hint = "give a folder with one sub-folder per class"
        raise CliError(f"{args.examples}: no such folder", hint, INPUT_NOT_FOUND)
    descriptions = _descriptions(args.descriptions)
    model, _ = model_from_args(args)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        inspector = fit_inspector(
            model,
            args.examples,
            method=args.method,
            alpha=args.alpha,
            mode=args.mode,
            calib_fraction=args.calib_fraction,
            seed=args.seed,
            descriptions=descriptions,
            model_name=args.model,
            pretrained=args.pretrained,
            batch_size=args.batch_size,
            **dict(args.hparam),
        )
    for warning in caught:
        log.warning("%s", warning.message)
    report_skipped([{"image": p, "error": why} for p, why in inspector.skipped.items()], len(inspector.skipped) + 1)
    out = inspector.save(args.out)
    if not args.no_report:
        path = write_report(inspector, out / "report")
        log.info("report: %s", path)
    counts = [len(inspector.support), len(inspector.calibration)]
    print(f"inspector written to {out} ({counts[0]} learning, {counts[1]} calibration images)", file=sys.stderr)
    return 0


def _expand(inputs: list[str]) -> list[str]:
    """Files as given; a folder becomes its image files (recursive, sorted)."""
    from ..apps.inspect.inspector import _images_in

    paths = []
    for item in inputs:
        path = Path(item)
        paths.extend(_images_in(path) if path.is_dir() else [item])
    return paths


CSV_COLUMNS = ("image", "decision", "confidence", "prediction_set", "nearest", "nearest_similarity", "error")


def _csv_text(records: list[dict]) -> str:
    """One row per image; the set and the nearest examples are ';'-joined (the full detail is in JSONL)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in records:
        if "error" in r:
            writer.writerow([r["image"], "", "", "", "", "", r["error"]])
            continue
        writer.writerow(
            [
                r["image"],
                r["decision"],
                f"{r['confidence']:.6g}",
                ";".join(r["prediction_set"]),
                ";".join(n["image"] for n in r["nearest"]),
                ";".join(f"{n['similarity']:.6g}" for n in r["nearest"]),
                "",
            ]
        )
    return buffer.getvalue()


def _run(args: argparse.Namespace) -> int:
    from ..apps.inspect.inspector import load_inspector
    from .common import resolve_device

    device = resolve_device(args.device)
    inspector = load_inspector(args.inspector, device=device)
    paths = _expand(args.images)
    if not paths:
        raise CliError("no image files among the inputs", "give image files or folders holding images", INPUT_NOT_FOUND)
    records = inspector.run(paths, batch_size=args.batch_size)
    errors = [r for r in records if "error" in r]
    report_skipped(
        [{"image": r["image"], "error": r["error"], "missing": r["error"] == "no such file"} for r in errors],
        len(records),
    )
    if args.out is not None and args.out.lower().endswith(".csv"):
        text = _csv_text(records)
    else:
        text = "".join(json_text(r) + "\n" for r in records)
    if args.out is None:
        sys.stdout.write(text)
    else:
        from ..atomic import atomic_write_bytes

        atomic_write_bytes(Path(args.out), text.encode())
    return 0


@command("clipforge inspect")
def main(argv: list[str] | None = None) -> int:
    """`clipforge inspect fit|run`; returns the exit code."""
    args = build_parser().parse_args(argv)
    return _fit(args) if args.action == "fit" else _run(args)
