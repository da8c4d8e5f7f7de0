"""Run many `clipforge` command lines in one interpreter: driver.py SPEC.json RESULTS.jsonl.

SPEC is a JSON list of argument lists; each goes through clipforge.cli.main.main (what the `clipforge`
script runs) with stdout and stderr captured, and its exit code, output and time are appended to RESULTS
as one JSON line as soon as it ends, so a case that hangs or kills the process is the first one missing.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import time


def main() -> int:
    from clipforge.cli.main import main as clipforge

    spec, results = sys.argv[1], sys.argv[2]
    with open(spec) as handle:
        commands = json.load(handle)
    for argv in commands:
        out, err = io.StringIO(), io.StringIO()
        start = time.monotonic()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = clipforge(list(argv))
            except SystemExit as exc:  # not expected: main returns codes; record it rather than stop
                code = exc.code if isinstance(exc.code, int) else 1
        record = {"argv": argv, "code": code, "stdout": out.getvalue(), "stderr": err.getvalue()}
        record["seconds"] = time.monotonic() - start
        with open(results, "a") as handle:
            handle.write(json.dumps(record) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
