"""Logging for the `clipforge` command, set up only by the CLI (never when the library is imported).

Library modules log to `logging.getLogger(__name__)`, i.e. under the "clipforge" logger. While a
subcommand runs, those records and Python warnings go to stderr as one line each, prefixed like the
error lines (`clipforge embed: warning: ...`), at a level chosen by -q / -v.
"""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

LOGGER_NAME = "clipforge"


def level_for(verbosity: int) -> int:
    """-q (verbosity -1 or less): errors only; default: warnings; -v: info; -vv: debug."""
    if verbosity <= -1:
        return logging.ERROR
    return {0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG)


class _LineFormatter(logging.Formatter):
    def __init__(self, command: str) -> None:
        super().__init__()
        self.command = command

    def format(self, record: logging.LogRecord) -> str:
        message = " ".join(record.getMessage().split())  # one line, whatever the message holds
        return f"{self.command}: {record.levelname.lower()}: {message}"


class _StderrHandler(logging.StreamHandler):
    """Writes to the sys.stderr of the moment (pytest and callers may swap it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    def emit(self, record: logging.LogRecord) -> None:
        self.setStream(sys.stderr)
        super().emit(record)


@contextmanager
def cli_logging(command: str, verbosity: int = 0) -> Iterator[logging.Logger]:
    """Route the "clipforge" logger and Python warnings to stderr for one command; restore everything after."""
    logger = logging.getLogger(LOGGER_NAME)
    handler = _StderrHandler()
    handler.setFormatter(_LineFormatter(command))
    saved = (logger.level, logger.propagate)
    logger.addHandler(handler)
    logger.setLevel(level_for(verbosity))
    logger.propagate = False

    def show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ARG001
        logging.getLogger(LOGGER_NAME).warning("%s", message)

    try:
        with warnings.catch_warnings():
            warnings.showwarning = show_warning
            yield logger
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]
