"""argparse `type=` converters for every numeric option of the CLI, in one place.

`type=int` accepts `--batch-size -1` (an empty result with exit 0) and `--top-k 0` (a traceback deep in the
model code). These converters refuse such values while the command line is parsed, so argparse reports one
line and exit code 2 through CliParser.error:

    clipforge classify: error: argument --batch-size: must be a positive integer, got -1; see ...

The message names what was expected and repeats what was given; argparse adds the option's name.
"""

from __future__ import annotations

import argparse
import math

# Above this an integer option is a typo, not a setting: batch sizes, shot counts, worker processes and seeds
# all fit in 32 bits, and torch/numpy seeds or range() steps far beyond it fail late with obscure errors.
MAX_INT = 2**31 - 1


def _parse_int(text: str, expected: str) -> int:
    """`text` as a base-10 integer, or ArgumentTypeError saying what was `expected` and what came."""
    try:
        value = int(text.strip(), 10)
    except (ValueError, AttributeError):
        raise argparse.ArgumentTypeError(f"must be {expected}, got {text!r}") from None
    if value > MAX_INT:
        raise argparse.ArgumentTypeError(f"must be {expected} of at most {MAX_INT}, got {text}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1 (batch sizes, top-k, shots per class, samples per shard)."""
    value = _parse_int(text, "a positive integer")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """An integer >= 0 (worker processes, where 0 means "in the main process"; random seeds)."""
    value = _parse_int(text, "a non-negative integer")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {value}")
    return value



def open_fraction(text: str) -> float:
    """A number strictly between 0 and 1 (the share of a dataset carved out as a test split); "nan", "inf",
    "1e999", 0 and 1 are refused (a carve of nothing or of everything leaves one side empty)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number strictly between 0 and 1, got {text!r}") from None
    if not 0 < value < 1:  # False for nan too
        raise argparse.ArgumentTypeError(f"must be a number strictly between 0 and 1, got {text}")
    return value


def unit_interval(text: str) -> float:
    """A number in [0, 1], both ends included (WiSE-FT's mixing coefficient alpha); "nan" and "inf" are refused."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1], got {text!r}") from None
    if not 0 <= value <= 1:  # False for nan too
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1], got {text}")
    return value


def positive_number(text: str) -> float:
    """A finite number > 0 (sizes such as --max-image-mb); "nan", "inf" and "1e999" are refused."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def key_value(text: str) -> tuple[str, object]:
    """`KEY=VALUE` -> (key, value) for options passed through to a library call; VALUE is JSON when it parses
    (numbers, lists, true/false), else the string itself."""
    import json

    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key.strip(), json.loads(value)
    except json.JSONDecodeError:
        return key.strip(), value
