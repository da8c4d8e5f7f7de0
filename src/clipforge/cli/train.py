"""`clipforge train RECIPE.py [--section.field=value ...]`: run a training recipe.

The recipe is a Python file with `get_config(arg) -> TrainConfig` (see configs/). Overrides change
single fields; the resolved config is written to OUTPUT_DIR/config.json. Rerunning the same command
resumes from the newest checkpoint in the output folder.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clipforge train",
        description="Train a CLIP model from a recipe file. Any config field can be overridden with "
        "--section.field=value (JSON values: numbers, true/false/null, lists, objects). Runs under torchrun "
        "for several processes; rerun to resume after a stop.",
        epilog="examples:\n  clipforge train configs/fashion_mnist.py\n"
        "  clipforge train configs/fashion_mnist.py --arg smoke --optim.lr=1e-3 --output_dir=runs/try\n"
        "  torchrun --nproc_per_node=2 -m clipforge.cli.main train configs/fashion_mnist.py",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("recipe", help="path to a recipe .py file with get_config(arg)")
    parser.add_argument("--arg", default=None, help="argument passed to get_config (e.g. smoke)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    return parser


def load_recipe(path: str, arg: str | None):
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"recipe {path} not found (expected a .py file with get_config(arg))")
    spec = importlib.util.spec_from_file_location(f"clipforge_recipe_{file.stem}", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise AttributeError(f"recipe {path} defines no get_config(arg) function")
    return module.get_config(arg)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, overrides = parser.parse_known_args(argv)
    bad = [o for o in overrides if not (o.startswith("--") and "=" in o)]
    if bad:
        parser.error(f"unrecognised arguments {bad}; overrides look like --section.field=value")
    from ..models.config import ConfigError
    from ..train.loop import TrainingError, train
    from ..train.overrides import apply_overrides

    try:
        cfg = apply_overrides(load_recipe(args.recipe, args.arg), overrides)
    except (ConfigError, FileNotFoundError, AttributeError) as exc:
        print(f"clipforge train: error: {exc}", file=sys.stderr)
        return 2
    if args.print_config:
        print(json.dumps(cfg.to_dict(), indent=2, default=str))
        return 0
    try:
        result = train(cfg)
    except TrainingError as exc:
        print(f"clipforge train: error: {exc}", file=sys.stderr)
        return 1
    if result.interrupted:
        return 143
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in result.final_metrics.items())
    print(f"done: {result.state.step} steps; {metrics}; model saved to {result.model_dir}")
    return 0
