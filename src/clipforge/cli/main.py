"""`clipforge` entry point: dispatches `clipforge SUBCOMMAND ...` to `clipforge.cli.SUBCOMMAND.main`."""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "models": "list architectures and downloadable pretrained weights",
    "classify": "zero-shot classify images among text labels (JSON out)",
    "embed": "embed images or texts into a .npy file",
    "convert": "convert a checkpoint between clipforge, OpenCLIP and Hugging Face formats",
    "train": "train or fine-tune a CLIP model from a recipe (configs/*.py)",
    "eval": "zero-shot, retrieval, linear-probe and few-shot evaluation with a report",
    "data": "data tools: write WebDataset shards from a folder or CSV",
}

USAGE = "usage: clipforge COMMAND [options]   (clipforge COMMAND --help for details)\n\ncommands:\n" + "\n".join(
    f"  {name:<10} {text}" for name, text in COMMANDS.items()
)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        from .. import __version__

        print(f"clipforge {__version__}")
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"clipforge: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"clipforge.cli.{command}")
    return module.main(rest)


if __name__ == "__main__":
    sys.exit(main())
