"""One error path for every `clipforge` subcommand: exit codes, one-line messages, --debug tracebacks.

A user who mistypes a path or a model name should read what happened and what to do, on one line:

    clipforge classify: error: missing.jpg: no such file; check the path

not a Python traceback. `run_command` runs a subcommand's `main(argv)` and turns every exception
it knows into that line and a documented exit code (EXIT_CODES); anything else still prints one
line plus "run with --debug for the traceback". With --debug the traceback is shown instead.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import traceback
from collections.abc import Callable
from typing import NoReturn

OK = 0
RUNTIME_ERROR = 1
USAGE_ERROR = 2
INPUT_NOT_FOUND = 3
MODEL_ERROR = 4
INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C
TERMINATED = 143  # 128 + SIGTERM: a training run stopped by a scheduler (checkpoint saved)
BROKEN_PIPE = 141  # 128 + SIGPIPE, what `yes | head -1` reports for `yes`

EXIT_CODES: dict[int, str] = {
    OK: "success",
    RUNTIME_ERROR: "runtime error (training failed, nothing usable in the input, unexpected error)",
    USAGE_ERROR: "bad argument, option value, override or device",
    INPUT_NOT_FOUND: "an input file or folder is missing or cannot be read",
    MODEL_ERROR: "model or checkpoint error (unknown architecture, bad or mismatched checkpoint, hub download)",
    INTERRUPTED: "interrupted (Ctrl-C); a training run saves a checkpoint first",
    TERMINATED: "a training run stopped by SIGTERM after saving a checkpoint (rerun to resume)",
    BROKEN_PIPE: "the reader of stdout went away (e.g. `| head`); nothing is printed",
}


def interrupted_exit(command: str, step: int, stop_signal: int | None) -> int:
    """Say where a training run stopped (one stderr line) and return 130 for Ctrl-C, 143 for SIGTERM."""
    import signal

    print(f"{command}: interrupted at step {step}; checkpoint saved, rerun the same command to resume", file=sys.stderr)
    return INTERRUPTED if stop_signal == signal.SIGINT else TERMINATED


def exit_codes_epilog() -> str:
    """The exit code table for `clipforge --help`."""
    return "exit codes:\n" + "\n".join(f"  {code:<4} {text}" for code, text in sorted(EXIT_CODES.items()))


class CliError(Exception):
    """An error the CLI reports as `clipforge CMD: error: MESSAGE; HINT` and exit code `code`."""

    def __init__(self, message: str, hint: str = "", code: int = RUNTIME_ERROR) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.code = code


class UsageError(CliError):
    """A bad command line (argparse's errors): exit code 2."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message, hint, USAGE_ERROR)


class CliParser(argparse.ArgumentParser):
    """argparse with one-line errors: a usage mistake raises UsageError instead of printing the usage block."""

    def error(self, message: str) -> NoReturn:
        """Turn argparse's usage errors into UsageError, so they take the CLI's one error path."""
        raise UsageError(message, f"see {self.prog} --help")


MAX_MESSAGE_CHARS = 2000  # an error line quotes inputs (a template, a CSV field): a 17 MB one is no message


def _one_line(text: str) -> str:
    """`text` on one line, cut to MAX_MESSAGE_CHARS with the number of characters left out said."""
    line = " ".join(str(text).split())
    if len(line) > MAX_MESSAGE_CHARS:
        line = f"{line[:MAX_MESSAGE_CHARS]}... ({len(line) - MAX_MESSAGE_CHARS:,} more characters)"
    return line


def _os_error_text(exc: OSError) -> str:
    """`path: reason` for an OSError with a file name ("[Errno 2] No such file ..." reads badly)."""
    if exc.filename is not None and exc.strerror:
        return f"{os.fsdecode(exc.filename)}: {exc.strerror.lower()}"
    return str(exc)


def _hub_error_types() -> tuple[type[BaseException], ...]:
    try:
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency
        return ()
    return HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled


def classify_error(exc: BaseException) -> tuple[int, str, str]:
    """(exit code, what happened, what to do) for a known exception; (1, ..., "") for others.

    The order matters: HubDownloadError is a FileNotFoundError but a model problem (4); a
    CheckpointError about a missing file is still a checkpoint problem; ConfigError is a ValueError.
    """
    from ..models.config import ConfigError
    from ..weights.formats import CheckpointError
    from ..weights.hub import HubDownloadError

    if isinstance(exc, CliError):
        return exc.code, exc.message, exc.hint
    from ..locking import FolderInUseError

    if isinstance(exc, FolderInUseError):  # its message already ends with what to do
        return RUNTIME_ERROR, str(exc), ""
    if isinstance(exc, KeyboardInterrupt):
        return INTERRUPTED, "interrupted", ""
    if isinstance(exc, HubDownloadError):
        return MODEL_ERROR, str(exc), ""
    if isinstance(exc, _hub_error_types()):
        return MODEL_ERROR, f"hub: {exc}", "check the hub id and your connection, or set HF_HUB_OFFLINE=1"
    if isinstance(exc, CheckpointError):
        return MODEL_ERROR, str(exc), ""
    if isinstance(exc, (FileNotFoundError, IsADirectoryError, NotADirectoryError)):
        return INPUT_NOT_FOUND, _os_error_text(exc), "check the path"
    if isinstance(exc, PermissionError):
        return INPUT_NOT_FOUND, _os_error_text(exc), "check the file's permissions"
    from ..safeio import FileTooLargeError, NotRegularFileError

    if isinstance(exc, NotRegularFileError):  # a FIFO, socket or device where a file was named
        return INPUT_NOT_FOUND, str(exc), ""
    if isinstance(exc, FileTooLargeError):
        return USAGE_ERROR, str(exc), ""
    if isinstance(exc, ConfigError):
        return USAGE_ERROR, str(exc), ""
    if isinstance(exc, ValueError):
        return USAGE_ERROR, str(exc), ""
    from ..data.bad import DataError

    if isinstance(exc, DataError):
        return RUNTIME_ERROR, str(exc), ""
    if isinstance(exc, OSError):
        return RUNTIME_ERROR, _os_error_text(exc), ""
    if type(exc).__name__ == "TrainingError":  # clipforge.train.loop, not imported here (it pulls in the trainer)
        return RUNTIME_ERROR, str(exc), ""
    return RUNTIME_ERROR, f"{type(exc).__name__}: {exc}", "run with --debug for the traceback"


def format_error(command: str, exc: BaseException) -> tuple[int, str]:
    """(exit code, the one line to print) for `exc` raised by `clipforge COMMAND`."""
    code, message, hint = classify_error(exc)
    line = f"{command}: error: {_one_line(message)}"
    if hint and hint not in message:
        line = line.rstrip(".") + f"; {_one_line(hint)}"
    return code, line


def quiet_broken_pipe() -> None:
    """Point stdout at devnull so that the interpreter's final flush cannot raise again.

    https://docs.python.org/3/library/signal.html#note-on-sigpipe: without this, a reader that
    stops early (`clipforge models | head -1`) leaves "Exception ignored ... BrokenPipeError".
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # stdout is not a real file (pytest capture): nothing to do
        pass


def run_command(
    command: str, main: Callable[[list[str]], int], argv: list[str] | None, *, debug: bool, keep_exit: bool = False
) -> int:
    """Run `main(argv)`; every exception becomes one stderr line and an exit code (a traceback with debug).

    `command` is what error lines start with, e.g. "clipforge classify". SystemExit (argparse's --help)
    becomes its code, or is re-raised with `keep_exit` (a subcommand's main called directly behaves as
    argparse does).
    """
    try:
        code = main(argv)
        sys.stdout.flush()  # here, not at interpreter exit, so that a closed pipe is handled below
        return code
    except SystemExit as exc:  # --help, or a subcommand that exits on purpose
        if keep_exit:
            raise
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        print(f"{command}: error: {_one_line(str(exc.code))}", file=sys.stderr)
        return RUNTIME_ERROR
    except BrokenPipeError:
        quiet_broken_pipe()
        return BROKEN_PIPE
    except BaseException as exc:  # noqa: BLE001 - the one place every failure is reported
        code, line = format_error(command, exc)
        if debug:
            traceback.print_exception(exc, file=sys.stderr)
        print(line, file=sys.stderr)
        return code


def command(prog: str) -> Callable[[Callable[[list[str] | None], int]], Callable[[list[str] | None], int]]:
    """Decorate a subcommand's `main(argv) -> int` so that calling it directly (tests, scripts) also reports
    errors as one line and an exit code. `clipforge` (main.py) calls the undecorated function (`__wrapped__`)
    inside its own error path, with --debug and the logging level applied.
    """

    def decorate(func: Callable[[list[str] | None], int]) -> Callable[[list[str] | None], int]:
        @functools.wraps(func)
        def direct(argv: list[str] | None = None) -> int:
            from .logs import cli_logging

            with cli_logging(prog):
                return run_command(prog, func, argv, debug=False, keep_exit=True)

        return direct

    return decorate
