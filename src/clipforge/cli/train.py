"""`clipforge train RECIPE [--arg ARG] [--section.field=value ...]`: run a training recipe.

RECIPE is a shipped recipe name (`clipforge train --list`) or a user's .py file with `get_config(arg)`.
Overrides are type-checked against the config dataclasses (train/overrides.py); `--help` after a recipe
lists every field with its type, the recipe's value and its documentation. The resolved config is written
to OUTPUT_DIR/config.json; rerunning the same command resumes from the newest checkpoint there.
Under torchrun only rank 0 reports; the output folder is locked while a run writes it.
"""

from __future__ import annotations

import json
import signal
import sys
import textwrap
from dataclasses import dataclass, field

from .errors import INTERRUPTED, TERMINATED, interrupted_exit

USAGE = (
    "usage: clipforge train RECIPE [--arg ARG] [--print-config] [--restart] "
    "[--section.field=value | --section.field value ...]\n"
    "       clipforge train --list\n"
    "       clipforge train RECIPE --help"
)
OPTIONS = """options:
  --arg ARG        the recipe's argument (a variant such as 'smoke', or a data path; see the recipe's text)
  --print-config   print the resolved config as JSON and exit
  --restart        start over at step 0 in an output folder that holds an earlier run; its metrics.jsonl,
                   checkpoints/, ... are kept with a .N suffix (the same as --checkpoint.restart=true)
  --list           list the shipped recipes
  --progress, --no-progress  the same as --logging.progress=true/false
  -h, --help       this help; after a recipe, also every config field with its type, value and meaning"""
ABOUT = (
    "Train or fine-tune a CLIP model from a recipe: a shipped name or a .py file with get_config(arg) -> "
    "TrainConfig. Any config field can be set with --section.field=value or --section.field value (bool fields "
    "also alone: --model.lock_image); values are checked against the field's type: numbers and strings as "
    "typed, bools as true/false/1/0, null/none for optional fields, JSON for lists and objects. Runs under "
    "torchrun for several processes; rerun the same command to resume after a stop."
)
EXAMPLES = """examples:
  clipforge train fashion_mnist
  clipforge train fashion_mnist --arg smoke --optim.lr 1e-3 --output_dir=runs/try
  clipforge train finetune_csv --arg pairs.csv --model.lock_image_unlocked_groups=1
  clipforge train path/to/my_recipe.py --help
  torchrun --nproc_per_node=2 -m clipforge.cli.main train fashion_mnist"""
DOC_WIDTH = 100


@dataclass(frozen=True)
class TrainArgs:
    """The command line split into the command's own options and the config overrides.

    Fields:
        recipe: the recipe name or path (None when not given).
        arg: the recipe argument (--arg).
        show_help: -h/--help was given.
        show_list: --list was given.
        print_config: --print-config was given.
        overrides: every other token, in order, for train.overrides.apply_overrides.
    """

    recipe: str | None = None
    arg: str | None = None
    show_help: bool = False
    show_list: bool = False
    print_config: bool = False
    overrides: tuple[str, ...] = field(default_factory=tuple)


def split_args(argv: list[str]) -> TrainArgs:
    """Own options anywhere; the first token that is not an option is the recipe; the rest are overrides.

    Overrides are only paired with their values later, once the recipe's types are known, so they must come
    after the recipe (`--optim.lr 1e-3 RECIPE` would be ambiguous).
    """
    from ..models.config import ConfigError

    values: dict = {"overrides": []}
    i = 0
    while i < len(argv):
        token = argv[i]
        if token in ("-h", "--help"):
            values["show_help"] = True
        elif token == "--list":
            values["show_list"] = True
        elif token == "--print-config":
            values["print_config"] = True
        elif token == "--arg" or token.startswith("--arg="):
            if token == "--arg":
                if i + 1 >= len(argv):
                    raise ConfigError("--arg needs a value (the recipe's argument)")
                i += 1
                values["arg"] = argv[i]
            else:
                values["arg"] = token.split("=", 1)[1]
        elif token == "--restart":
            values["overrides"].append("--checkpoint.restart=true")
        elif token in ("--progress", "--no-progress"):  # the option every clipforge command takes
            values["overrides"].append(f"--logging.progress={token == '--progress'}")
        elif token == "--device" and i + 1 < len(argv) and argv[i + 1] == "auto":  # as in the other commands
            values["overrides"].append("--device=null")
            i += 1
        elif "recipe" not in values:
            if token.startswith("-"):
                raise ConfigError(f"{token}: config overrides go after the recipe: clipforge train RECIPE {token} ...")
            values["recipe"] = token
        else:
            values["overrides"].append(token)
        i += 1
    values["overrides"] = tuple(values["overrides"])
    return TrainArgs(**values)


def recipes_text() -> str:
    """The help paragraph listing the recipes shipped in `clipforge.recipes` with their summaries."""
    from ..recipes import list_recipes

    recipes = list_recipes()
    width = max(len(name) for name in recipes)
    lines = [f"  {name:<{width}}  {summary}" for name, summary in recipes.items()]
    return "shipped recipes (clipforge train NAME --help for their fields):\n" + "\n".join(lines)


def fields_text(config) -> str:
    """Every config field: `--name  type = value` and its wrapped documentation."""
    from ..train.fieldinfo import iter_fields

    lines = ["config fields (--NAME=VALUE or --NAME VALUE; values shown are this recipe's, after overrides):"]
    for info in iter_fields(config):
        lines.append(f"  --{info.name}  {info.type} = {info.default}")
        if info.doc:
            lines.extend(textwrap.wrap(info.doc, DOC_WIDTH, initial_indent=" " * 6, subsequent_indent=" " * 6))
        if info.keys:
            lines.append("      keys of each object:")
            for key in info.keys:
                text = f"{key.name}: {key.type} = {key.default}" + (f". {key.doc}" if key.doc else "")
                lines.extend(textwrap.wrap(text, DOC_WIDTH, initial_indent=" " * 8, subsequent_indent=" " * 10))
    return "\n".join(lines)


def help_text(args: TrainArgs, module=None, config=None) -> str:
    """`clipforge train --help`: general usage, or a recipe's docstring and its config fields when one is named."""
    parts = [USAGE, textwrap.fill(ABOUT, DOC_WIDTH), OPTIONS]
    if module is None:
        parts += [recipes_text(), EXAMPLES]
    else:
        title = f"recipe {args.recipe}" + (f" (--arg {args.arg})" if args.arg is not None else "") + ":"
        parts += [title + "\n" + textwrap.indent((module.__doc__ or "").strip(), "  "), fields_text(config)]
    return "\n\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    """`clipforge train RECIPE [--section.field=value ...]`: build the config and train; returns the exit code."""
    args = split_args(list(sys.argv[1:] if argv is None else argv))
    if args.recipe is None:
        if args.show_help or args.show_list:
            print(help_text(args) if args.show_help else recipes_text())
            return 0
        print(f"{USAGE}\n\n{recipes_text()}")
        return 2
    from ..recipes import load_recipe_module, recipe_config
    from ..train.loop import TrainingError, train
    from ..train.overrides import apply_overrides

    module = load_recipe_module(args.recipe)
    overrides = list(args.overrides)
    if not any(o.startswith("--logging.progress") for o in overrides) and not sys.stderr.isatty():
        overrides.insert(0, "--logging.progress=false")  # bars only on a terminal, as in every clipforge command
    cfg = apply_overrides(recipe_config(module, args.arg), overrides)
    if args.show_help:
        print(help_text(args, module, cfg))
        return 0
    if args.print_config:
        print(json.dumps(cfg.to_dict(), indent=2, default=str))
        return 0
    try:
        result = train(cfg)
    except TrainingError as exc:
        print(f"clipforge train: error: {exc}", file=sys.stderr)
        return 1
    if not result.is_main:  # under torchrun, rank 0 alone reports the run (the others have no model path)
        if result.interrupted:
            return INTERRUPTED if result.stop_signal == signal.SIGINT else TERMINATED
        return 0
    if result.interrupted:
        return interrupted_exit("clipforge train", result.state.step, result.stop_signal)  # 130 Ctrl-C, 143 SIGTERM
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in result.final_metrics.items())
    print(f"done: {result.state.step} steps; {metrics}; model saved to {result.model_dir}")
    return 0
