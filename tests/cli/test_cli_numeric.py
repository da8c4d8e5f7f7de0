"""Every numeric option of every subcommand refuses 0/-1/garbage/overflow at parse time: one line, exit 2.

Before, `--batch-size -1` gave empty results with exit 0 and `--batch-size 0` / `--top-k 0` were tracebacks.
The values are checked by clipforge.cli.argtypes while argparse parses, before any model or file is touched,
so these cases need no model and no image (the paths given do not exist: parsing must fail first).
"""

from __future__ import annotations

import argparse
import re

import pytest

from clipforge.cli import argtypes, errors
from clipforge.cli.main import main as cli

# (command, the arguments around the flag, flag, what the refusal says, values that must be refused).
# "1e999" is a float literal for infinity; 2**31 is past MAX_INT.
POSITIVE = ["0", "-1", "abc", "1e999", "1.5", "", str(2**31)]
NON_NEGATIVE = ["-1", "abc", "1e999", "nan", str(2**31)]
POSITIVE_NUMBER = ["0", "-1", "abc", "1e999", "nan", "inf", "-inf", ""]
OPEN_FRACTION = ["0", "1", "-1", "abc", "1e999", "nan", "inf", "1.5"]
CASES = [
    ("classify", ["x.jpg", "--labels", "a,b", "--model", "tiny-vit"], "--top-k", "a positive integer", POSITIVE),
    ("classify", ["x.jpg", "--labels", "a,b", "--model", "tiny-vit"], "--batch-size", "a positive integer", POSITIVE),
    ("embed", ["--images", "x.jpg", "--out", "o.npy", "--model", "tiny-vit"], "--batch-size", "a positive integer",
     POSITIVE),
    ("eval", ["--dataset", "folder", "--model", "tiny-vit"], "--batch-size", "a positive integer", POSITIVE),
    ("eval", ["--dataset", "folder", "--model", "tiny-vit"], "--max-samples", "a positive integer", POSITIVE),
    ("eval", ["--dataset", "folder", "--model", "tiny-vit"], "--ks", "a positive integer", POSITIVE),
    ("eval", ["--dataset", "folder", "--model", "tiny-vit"], "--seeds", "a non-negative integer", NON_NEGATIVE),
    ("eval", ["--dataset", "folder", "--model", "tiny-vit"], "--workers", "a non-negative integer", NON_NEGATIVE),
    ("eval", ["--dataset", "folder", "--model", "tiny-vit"], "--split-seed", "a non-negative integer", NON_NEGATIVE),
    ("eval", ["--dataset", "folder", "--model", "tiny-vit"], "--carve-test-fraction", "strictly between 0 and 1",
     OPEN_FRACTION),
    ("data", ["make-shards", "--from-folder", "nowhere", "--out", "o"], "--samples-per-shard", "a positive integer",
     POSITIVE),
    ("data", ["make-shards", "--from-folder", "nowhere", "--out", "o"], "--max-image-mb", "a positive number",
     POSITIVE_NUMBER),
]


def _params():
    for command, around, flag, expected, values in CASES:
        for value in values:
            yield pytest.param(command, around, flag, expected, value, id=f"{command}{flag}={value or 'empty'}")


@pytest.mark.parametrize(("command", "around", "flag", "expected", "value"), list(_params()))
def test_numeric_flag_refused_at_parse_time(command, around, flag, expected, value, capsys):
    # `--flag=value` so that "-1" and "" reach the type check whatever argparse thinks of leading dashes.
    code = cli([command, *around, f"{flag}={value}", "--no-progress"])
    err = capsys.readouterr().err
    assert code == errors.USAGE_ERROR, err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith(f"clipforge {command}: error: ")]
    assert len(lines) == 1, err
    # argparse names a flag with its aliases (`--ks/--shots`)
    assert re.search(rf"argument {re.escape(flag)}(/--[\w-]+)*: must be ", lines[0]) and expected in lines[0], lines[0]


def test_negative_value_as_separate_token(capsys):
    """`--batch-size -1` (the form in the issue, two tokens) reads -1 as the value, and refuses it."""
    code = cli(["classify", "x.jpg", "--labels", "a", "--model", "tiny-vit", "--batch-size", "-1"])
    err = capsys.readouterr().err
    assert code == errors.USAGE_ERROR
    assert "argument --batch-size: must be a positive integer, got -1" in err, err


def test_multi_valued_flag_names_the_bad_element(capsys):
    code = cli(["eval", "--dataset", "folder", "--model", "tiny-vit", "--ks", "1", "2", "0"])
    err = capsys.readouterr().err
    assert code == errors.USAGE_ERROR
    assert "argument --ks/--shots: must be a positive integer, got 0" in err, err


@pytest.mark.parametrize(("func", "good"), [(argtypes.positive_int, ["1", " 7 ", str(argtypes.MAX_INT)]),
                                            (argtypes.non_negative_int, ["0", "1", "+3"]),
                                            (argtypes.open_fraction, ["0.2", "1e-3", "0.999"]),
                                            (argtypes.unit_interval, ["0", "0.5", "1"]),
                                            (argtypes.positive_number, ["0.5", "64", "1e3"])])
def test_argtypes_accept_valid_values(func, good):
    assert [func(text) for text in good] == [type(func(good[0]))(text) for text in good]


NUMBERS = [
    argtypes.positive_int, argtypes.non_negative_int, argtypes.open_fraction, argtypes.positive_number,
    argtypes.unit_interval,
]


@pytest.mark.parametrize("func", NUMBERS)
@pytest.mark.parametrize("bad", ["-1", "abc", "1e999", "inf", "nan", ""])
def test_argtypes_refuse_garbage(func, bad):
    with pytest.raises(argparse.ArgumentTypeError, match="must be a"):
        func(bad)


@pytest.mark.parametrize("func", [argtypes.positive_int, argtypes.non_negative_int])
@pytest.mark.parametrize("bad", ["1.5", "0x10", "1_000_000_000_000"])
def test_int_argtypes_refuse_fractions_hex_and_huge(func, bad):
    with pytest.raises(argparse.ArgumentTypeError, match="must be a"):
        func(bad)


def test_every_numeric_option_uses_a_checked_type():
    """A new `type=int` option would let 0/-1 through again: every int-valued option must use argtypes."""
    from clipforge.cli import classify, convert, data, embed, models
    from clipforge.cli import eval as eval_cli
    from clipforge.cli.argtypes import key_value

    checked = set(NUMBERS) | {key_value, eval_cli._methods, eval_cli._ood_spec}  # --option/--methods/--ood: not numbers
    seen = 0
    for module in (classify, embed, eval_cli, convert, models, data):
        parsers = [module.build_parser()]
        while parsers:
            parser = parsers.pop()
            for action in parser._actions:
                if isinstance(action, argparse._SubParsersAction):
                    parsers.extend(action.choices.values())
                elif action.type is not None:
                    assert action.type in checked, (module.__name__, action.option_strings, action.type)
                    seen += 1
    assert seen == 20  # classify 2, embed 1, eval 9 (+ --option, --methods, --ood), data 5 (export-collection 3)
