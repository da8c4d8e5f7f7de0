"""`clipforge` entry point: dispatches `clipforge SUBCOMMAND ...` to `clipforge.cli.SUBCOMMAND.main`.

Every subcommand runs through one error path (errors.run_command) and one logging setup (logs.cli_logging),
so a mistake is one `clipforge CMD: error: ...; ...` line and a documented exit code whatever the command.
"""

from __future__ import annotations

import importlib
import re
import sys

from .errors import USAGE_ERROR, exit_codes_epilog, run_command
from .logs import cli_logging

COMMANDS = {
    "models": "list architectures and downloadable pretrained weights",
    "classify": "zero-shot classify images among text labels (JSON lines out)",
    "embed": "embed images or texts into a .npy file",
    "convert": "convert a checkpoint between clipforge, OpenCLIP and Hugging Face formats",
    "train": "train or fine-tune a CLIP model from a shipped recipe (clipforge train --list) or a .py file",
    "eval": "zero-shot, retrieval, linear-probe and few-shot evaluation with a report",
    "data": "data tools: WebDataset shards from a folder or CSV (make-shards), export-collection (clip-art, emoji)",
    "inspect": "few-shot visual inspection: fit an inspector from example folders, run it on images",
    "index": "embed a collection into a searchable index (build), bring it up to date (update), copy to Qdrant",
    "search": "search an index by text, image, row or embedding (rclip query syntax: 2:cat + ./img.jpg - fruit)",
    "dedup": "near-duplicate groups and a keep-list for a collection; --against finds eval images in it",
    "serve": "serve indices over HTTP: a search page, JSON API, clip-retrieval's clip-back API (127.0.0.1)",
}

USAGE = (
    "usage: clipforge [--debug] [-q | -v] COMMAND [options]   (clipforge COMMAND --help for details)\n\ncommands:\n"
    + "\n".join(f"  {name:<10} {text}" for name, text in COMMANDS.items())
    + "\n\ngeneral options (also accepted after COMMAND):\n"
    "  --debug        show the Python traceback of an error instead of one line\n"
    "  -q, --quiet    print errors only (no warnings, no progress)\n"
    "  -v, --verbose  print more; -vv adds debug messages\n"
    "  -V, --version  print the version\n"
    "\nevery command also takes --device auto|cpu|cuda[:N]|mps where it runs a model, and --progress / "
    "--no-progress\n(progress bars are shown only when stderr is a terminal).\n\n" + exit_codes_epilog()
)

_VERBOSE = re.compile(r"^-v+$")
_QUIET = re.compile(r"^-q+$")


def _global_options(tokens: list[str]) -> tuple[bool, int]:
    """(debug, verbosity) from --debug, -q/--quiet and -v/--verbose anywhere before a `--`."""
    debug, verbosity = False, 0
    for token in tokens:
        if token == "--":
            break
        if token == "--debug":
            debug = True
        elif token == "--verbose":
            verbosity += 1
        elif token == "--quiet":
            verbosity -= 1
        elif _VERBOSE.match(token):
            verbosity += len(token) - 1
        elif _QUIET.match(token):
            verbosity -= len(token) - 1
    return debug, verbosity


def _is_global(token: str) -> bool:
    return token in ("--debug", "--verbose", "--quiet") or bool(_VERBOSE.match(token) or _QUIET.match(token))


def main(argv: list[str] | None = None) -> int:
    """The `clipforge` command: global options, then dispatch to `clipforge.cli.COMMAND.main`; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    leading = 0
    while leading < len(argv) and _is_global(argv[leading]):
        leading += 1
    before, argv = argv[:leading], argv[leading:]
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else USAGE_ERROR
    if argv[0] in ("-V", "--version"):
        from .. import __version__

        print(f"clipforge {__version__}")
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(
            f"clipforge: error: unknown command {command!r}; the commands are {', '.join(COMMANDS)} "
            "(clipforge --help)",
            file=sys.stderr,
        )
        return USAGE_ERROR
    debug, verbosity = _global_options(before + rest)
    prog = f"clipforge {command}"
    # The general options are taken out here, wherever they stand (before any `--`): the subcommand sees
    # their effect (logging level, error path), not the tokens. Its --help lists them (add_common_arguments).
    split = rest.index("--") if "--" in rest else len(rest)
    rest = [token for token in rest[:split] if not _is_global(token)] + rest[split:]

    def run(args: list[str]) -> int:
        module = importlib.import_module(f"clipforge.cli.{command}")
        return getattr(module.main, "__wrapped__", module.main)(args)  # errors.command's inner function

    with cli_logging(prog, verbosity):
        return run_command(prog, run, rest, debug=debug)


if __name__ == "__main__":
    sys.exit(main())
