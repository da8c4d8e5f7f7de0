"""Options every subcommand shares (--debug, -q/-v, --progress, --device, --model/--pretrained) and their meaning."""

from __future__ import annotations

import argparse
import difflib
import logging
import sys
from pathlib import Path

import torch

from ..jsonio import json_text
from .errors import INPUT_NOT_FOUND, MODEL_ERROR, USAGE_ERROR, CliError, UsageError
from .logs import LOGGER_NAME

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

log = logging.getLogger("clipforge.cli")

SHOW_SKIPPED = 20  # skipped inputs listed one per line on stderr; the rest are counted


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """--debug / -q / -v, for --help: main.py takes them out of the command line wherever they stand (before or
    after the subcommand) and applies them (cli_logging's level, run_command's debug), so a parser never sees
    them when the command runs through `clipforge`."""
    group = parser.add_argument_group("general")
    group.add_argument("--debug", action="store_true", help="show the Python traceback of an error")
    group.add_argument("-q", "--quiet", action="count", default=0, help="print errors only (no warnings, progress)")
    group.add_argument("-v", "--verbose", action="count", default=0, help="print more (-vv: debug messages)")


def add_progress_arguments(parser: argparse.ArgumentParser) -> None:
    """Add --progress / --no-progress (default: a progress bar only when stderr is a terminal)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--progress", dest="progress", action="store_const", const=True, default=None, help="always show progress"
    )
    group.add_argument(
        "--no-progress",
        dest="progress",
        action="store_const",
        const=False,
        help="hide progress (default: shown only when stderr is a terminal)",
    )


def show_progress(args: argparse.Namespace) -> bool:
    """Progress bars go to stderr: shown on a terminal, hidden in logs and pipes, unless asked for."""
    if logging.getLogger(LOGGER_NAME).getEffectiveLevel() > logging.WARNING:  # -q
        return False
    if getattr(args, "progress", None) is not None:
        return bool(args.progress)
    return sys.stderr.isatty()


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the model options the subcommands share: --model, --pretrained and how to load them."""
    group = parser.add_argument_group("model")
    group.add_argument(
        "--model",
        default=None,
        help="architecture name (see `clipforge models`); optional when --pretrained is a checkpoint that "
        "describes itself (a clipforge/OpenCLIP/HF folder or file)",
    )
    group.add_argument(
        "--pretrained",
        default=None,
        help="pretrained tag for --model (e.g. openai, laion2b_s34b_b79k), a checkpoint file or folder, or a "
        "hub id org/repo. Without it the weights are random.",
    )
    group.add_argument(
        "--device",
        default="auto",
        help="torch device: auto (default: CUDA, else MPS, else CPU), cpu, cuda, cuda:N or mps",
    )
    group.add_argument("--precision", choices=sorted(DTYPES), default="fp32", help="weight dtype (default: fp32)")
    group.add_argument(
        "--allow-unsafe-pickle",
        action="store_true",
        help="allow full unpickling of a trusted legacy checkpoint that weights_only loading refuses",
    )
    group.add_argument(
        "--allow-nonfinite-weights",
        action="store_true",
        help="load a checkpoint whose weights hold NaN or inf (refused by default); outputs may then be null",
    )


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(spec: str) -> torch.device:
    """The device --device names; `auto` picks CUDA, then MPS, else CPU. An unavailable one is a usage error."""
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    hint = "use --device auto (CUDA, else MPS, else CPU) or --device cpu"
    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError) as exc:
        raise CliError(f"--device {spec!r} is not a torch device ({exc})", hint, USAGE_ERROR) from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch is a CPU-only build" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise CliError(f"--device {spec}: CUDA is not available ({why})", hint, USAGE_ERROR)
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            message = f"--device {spec}: there are {count} CUDA device(s), cuda:0..cuda:{count - 1}"
            raise CliError(message, hint, USAGE_ERROR)
    if device.type == "mps" and not _mps_available():
        raise CliError(f"--device {spec}: MPS (Apple GPU) is not available", hint, USAGE_ERROR)
    return device


def model_from_args(args: argparse.Namespace):
    """(model, random_weights) built from --model / --pretrained on --device.

    Also replaces `args.device` by the resolved torch.device, so callers move inputs to where the model is.
    Without --pretrained the weights are random: that is said on stderr, not only in the output records.
    """
    from ..models.config import ConfigError
    from ..models.registry import get_model_config, list_models
    from ..weights.loading import create_model, load_model

    if args.pretrained is None and args.model is None:
        raise UsageError("give --model NAME and/or --pretrained TAG_OR_PATH", "see `clipforge models`")
    args.device = resolve_device(args.device)
    if args.model is not None:
        try:
            get_model_config(args.model)
        except ConfigError as exc:
            close = difflib.get_close_matches(args.model, list_models(), n=3, cutoff=0.6)
            hint = (f"did you mean {' or '.join(close)}? " if close else "") + "`clipforge models` lists the names"
            raise CliError(f"--model {args.model} is not a known architecture", hint, MODEL_ERROR) from exc
    dtype = DTYPES[args.precision]
    if args.pretrained is None:
        log.warning(
            "no --pretrained: the weights of %s are random, so the results mean nothing; pass --pretrained "
            "TAG_OR_PATH (`clipforge models --pretrained` lists tags)",
            args.model,
        )
        return create_model(args.model, device=args.device, dtype=dtype), True
    loading = {
        "allow_unsafe_pickle": args.allow_unsafe_pickle,
        "check_finite": not getattr(args, "allow_nonfinite_weights", False),
    }
    if args.model is None:
        return load_model(args.pretrained, device=args.device, dtype=dtype, **loading), False
    return create_model(args.model, pretrained=args.pretrained, device=args.device, dtype=dtype, **loading), False


def print_json(data, out_path: str | None) -> None:
    """Print `data` as indented JSON, or write it atomically to `out_path` when one is given (always valid JSON:
    non-finite numbers become null, see json_text)."""
    text = json_text(data, indent=2)
    if out_path:
        from ..atomic import atomic_write_bytes

        atomic_write_bytes(Path(out_path), (text + "\n").encode())
    else:
        sys.stdout.write(text + "\n")


def fail(message: str, hint: str = "", code: int = 1) -> int:
    """Report a failure through the one error path (raises CliError; `return fail(...)` reads naturally)."""
    raise CliError(message, hint, code)


MAX_TEXT_ARG_BYTES = 16 * 2**20  # labels, templates, configs: far above ImageNet-21k's class list (~0.5 MB)


def read_text_arg(path: str, flag: str, max_bytes: int = MAX_TEXT_ARG_BYTES) -> str:
    """The UTF-8 text of a file a flag names (a BOM is dropped), as one error naming the flag when it cannot be.

    Only a regular file is read, and at most `max_bytes` of it: `--labels @fifo` would otherwise block forever
    in open() and `--config /dev/zero` fill the memory. Missing, a folder, a FIFO or device: exit 3; too large
    or not UTF-8 (the line and byte offset named): exit 2.
    """
    from ..safeio import FileTooLargeError, NotRegularFileError, read_regular_file

    try:
        data = read_regular_file(path, max_bytes, what="text file")
    except FileNotFoundError as exc:
        raise CliError(f"{flag} {path}: no such file", "check the path", INPUT_NOT_FOUND) from exc
    except IsADirectoryError as exc:
        raise CliError(f"{flag} {path}: is a folder", "give a text file", INPUT_NOT_FOUND) from exc
    except NotRegularFileError as exc:
        raise CliError(f"{flag} {path}: {exc.strerror}", "give a text file", INPUT_NOT_FOUND) from exc
    except FileTooLargeError as exc:
        raise CliError(f"{flag} {path}: {exc.strerror}", "", USAGE_ERROR) from exc
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        problem = f"{flag} {path}: line {line} (byte offset {exc.start}) is not UTF-8 text ({exc.reason})"
        raise CliError(problem, "re-save the file as UTF-8", USAGE_ERROR) from exc


def preprocessed_batches(paths: list[str], preprocess, batch_size: int):
    """Yield (images (B, 3, H, W) or None, readable paths, skipped [{"image", "error", "missing"}]) per batch.

    Unreadable files are skipped and reported, never fatal (a long job keeps going); "missing" tells a path
    that does not exist from a file that exists but is not a readable image.
    """
    from ..image import ImageLoadError, load_image

    for start in range(0, len(paths), batch_size):
        tensors, kept, skipped = [], [], []
        for path in paths[start : start + batch_size]:
            try:
                tensors.append(preprocess(load_image(path)))
                kept.append(path)
            except (ImageLoadError, OSError) as exc:
                missing = isinstance(exc, (FileNotFoundError, IsADirectoryError, NotADirectoryError))
                reason = "no such file" if isinstance(exc, FileNotFoundError) else str(exc)
                skipped.append({"image": path, "error": reason, "missing": missing})
        yield (torch.stack(tensors) if tensors else None), kept, skipped


def report_skipped(skipped: list[dict], total: int, *, what: str = "image", listing: Path | None = None) -> None:
    """One warning line per skipped input with the reason (the first SHOW_SKIPPED, then a count, and where
    the full list is); then an error if nothing at all was usable (exit 3 when every input was missing)."""
    for item in skipped[:SHOW_SKIPPED]:
        log.warning("skipped %s: %s", item["image"], item["error"])
    if len(skipped) > SHOW_SKIPPED:
        where = f"; all are listed in {listing}" if listing is not None else ""
        log.warning("... and %d more skipped %s(s)%s", len(skipped) - SHOW_SKIPPED, what, where)
    if skipped and len(skipped) == total:
        code = INPUT_NOT_FOUND if all(item.get("missing") for item in skipped) else 1
        raise CliError(
            f"none of the {total} {what}(s) could be read (first: {skipped[0]['image']}: {skipped[0]['error']})",
            "check the paths and that the files are images",
            code,
        )
