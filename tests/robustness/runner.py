"""Running `clipforge` as a subprocess under a time and memory limit, and judging how a run ended.

A run of the fuzz suite passes when it ends in one of two ways (`verdict`):
- exit 0, the bad items counted or reported (each test checks the count), no traceback;
- exactly one `clipforge CMD: error: ...` line and a documented non-zero exit code, no traceback.
A hang is a timeout; a memory blow-up hits the address-space limit (MemoryError, or a kill) instead of
taking the machine down with it.

`run_batch` runs many command lines in ONE interpreter (tests/robustness/driver.py), each through
`clipforge.cli.main.main` exactly as the `clipforge` script does, with its own captured stdout/stderr: the
corpus of bad checkpoints would otherwise pay the interpreter and torch start-up once per file.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from clipforge.cli.errors import EXIT_CODES

SRC = str(Path(__file__).parents[2] / "src")
TESTS = str(Path(__file__).parents[1])
DRIVER = str(Path(__file__).with_name("driver.py"))
MEMORY_LIMIT = 8 * 2**30  # address space per run: a resize into gigabytes fails here, not on the machine
TIMEOUT = 60.0


@dataclass(frozen=True)
class Run:
    """How one command line ended."""

    argv: tuple[str, ...]
    code: int | None  # None: killed by the timeout
    stdout: str
    stderr: str
    seconds: float

    @property
    def command(self) -> str:
        """The subcommand, e.g. "classify" or "data"."""
        return self.argv[0]

    def error_lines(self) -> list[str]:
        """The `clipforge CMD: error:` lines of stderr."""
        return [line for line in self.stderr.splitlines() if line.startswith(f"clipforge {self.command}: error: ")]

    def describe(self) -> str:
        """The run in a few lines, for a failure message."""
        tail = "\n    ".join(self.stderr.strip().splitlines()[-6:])
        line = " ".join(self.argv)[:300]
        return f"clipforge {line}\n  -> exit {self.code} in {self.seconds:.1f}s; stderr:\n    {tail}"


def verdict(run: Run, *, allow_error: bool = True) -> str | None:
    """None when `run` ended acceptably (see the module docs), else what went wrong."""
    if run.code is None:
        return f"hang: no exit within {run.seconds:.0f}s"
    if "Traceback" in run.stderr:
        return "traceback on stderr"
    if run.code < 0:
        return f"killed by signal {-run.code}"
    errors = run.error_lines()
    if run.code == 0:
        return f"exit 0 but an error line: {errors[0]}" if errors else None
    if not allow_error:
        return f"exit {run.code}, expected success: {errors[:1]}"
    if run.code not in EXIT_CODES:
        return f"undocumented exit code {run.code}"
    if len(errors) != 1:
        return f"exit {run.code} with {len(errors)} error lines (want exactly one)"
    if "run with --debug for the traceback" in errors[0]:
        return f"unexpected exception reported as such: {errors[0]}"
    return None


def env() -> dict[str, str]:
    """The child environment: this checkout's sources and tests first, one thread, no hub access, and no GPU
    (CUDA's start-up reserves far more address space than MEMORY_LIMIT; the inputs are what is under test)."""
    path = os.pathsep.join([SRC, TESTS, os.environ.get("PYTHONPATH", "")])
    extra = {"PYTHONPATH": path, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    return {**os.environ, **extra}


def _limit_memory() -> None:  # runs in the child before exec
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def _spawn(argv: list[str], timeout: float, cwd: str | Path | None) -> tuple[int | None, str, str, float]:
    start = time.monotonic()
    process = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env(), cwd=cwd, preexec_fn=_limit_memory
    )
    try:
        out, err = process.communicate(timeout=timeout)
        code: int | None = process.returncode
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        code = None
    decode = lambda data: data.decode("utf-8", "backslashreplace")  # noqa: E731
    return code, decode(out), decode(err), time.monotonic() - start


def run_cli(*args: str, timeout: float = TIMEOUT, cwd: str | Path | None = None) -> Run:
    """`clipforge ARGS` in a fresh interpreter (python -m clipforge)."""
    code, out, err, seconds = _spawn([sys.executable, "-m", "clipforge", *args], timeout, cwd)
    return Run(tuple(args), code, out, err, seconds)


def run_batch(commands: list[list[str]], workdir: Path, *, timeout: float = 120.0) -> list[Run]:
    """Each command line of `commands` through clipforge's entry point, all in one interpreter.

    A case that never finishes (or kills the interpreter) is reported as a hang (code None) or by the
    interpreter's exit status, with the cases after it run again in a new interpreter, so one bad case
    cannot hide the others.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    runs: list[Run] = []
    pending = list(commands)
    while pending:
        spec, results = workdir / f"batch-{len(runs)}.json", workdir / f"results-{len(runs)}.jsonl"
        spec.write_text(json.dumps(pending))
        results.unlink(missing_ok=True)
        code, _, err, seconds = _spawn([sys.executable, DRIVER, str(spec), str(results)], timeout, None)
        done = [json.loads(line) for line in results.read_text().splitlines()] if results.exists() else []
        for record in done:
            argv, code_, out, err_ = record["argv"], record["code"], record["stdout"], record["stderr"]
            runs.append(Run(tuple(argv), code_, out, err_, record["seconds"]))
        pending = pending[len(done) :]
        if pending and code is None or pending and code != 0:  # the next case hung or killed the interpreter
            dead = code if code is not None and code != 0 else None
            runs.append(Run(tuple(pending[0]), dead, "", err[-2000:], seconds))
            pending = pending[1:]
        elif pending:
            raise AssertionError(f"driver stopped early without an error:\n{err[-2000:]}")
    return runs
