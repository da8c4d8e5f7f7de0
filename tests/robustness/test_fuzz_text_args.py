"""Files named by options (`--labels @FILE`, `--templates FILE`, `embed --text-file`, `eval --config`) that are
FIFOs, devices, folders, binary, not UTF-8, empty or missing: one clear error line each, never a hang on the
FIFO, never /dev/zero read into memory.
"""

from __future__ import annotations

import os

import pytest
from PIL import Image

from robustness.runner import run_batch, verdict


def _text_inputs(root) -> dict[str, str]:
    root.mkdir(parents=True, exist_ok=True)
    os.mkfifo(root / "fifo.txt")
    os.symlink("/dev/zero", root / "zero.txt")
    (root / "folder.txt").mkdir()
    (root / "latin1.txt").write_bytes("caf\xe9\nna\xefve\n".encode("latin-1"))
    (root / "binary.txt").write_bytes(bytes(range(256)) * 16)
    (root / "empty.txt").write_bytes(b"")
    (root / "nul.txt").write_bytes(b"a\0b\n\0\n")
    (root / "huge.txt").write_bytes(b"x" * (17 * 2**20))  # 17 MiB: over the CLI's 16 MiB cap on these files
    names = ["fifo", "zero", "folder", "latin1", "binary", "empty", "nul", "huge", "missing"]
    return {name: str(root / f"{name}.txt") for name in names}


# What each input must give: "error" (refused) or "any" (a result or a refusal, both fine when clean). An empty
# file is an error for each flag: no labels, no templates, no texts, no JSON.
OUTCOME = {"fifo": "error", "zero": "error", "folder": "error", "latin1": "error", "binary": "error",
           "empty": "error", "nul": "any", "huge": "error", "missing": "error"}


@pytest.fixture(scope="module")
def text_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("textargs")
    inputs = _text_inputs(root / "inputs")
    image = root / "red.png"
    Image.new("RGB", (40, 30), (200, 20, 20)).save(image)
    commands, cases = [], []
    for name, path in inputs.items():
        model = ["--model", "tiny-vit", "--no-progress"]
        commands.append(["classify", str(image), "--labels", f"@{path}", *model])
        commands.append(["classify", str(image), "--labels", "a,b", "--templates", path, *model])
        commands.append(["eval", "--config", path, "--out", str(root / f"report-{name}")])
        cases += [name] * 3
        if name != "huge":  # --text-file may be large (256 MiB); one 17 MiB line takes the tokenizer ~20 s
            commands.append(["embed", "--text-file", path, "--out", str(root / f"{name}.npy"), *model])
            cases.append(name)
    return list(zip(cases, run_batch(commands, root / "batch", timeout=30)))


def test_files_named_by_options_fail_cleanly(text_runs):
    problems = []
    for name, run in text_runs:
        wrong = verdict(run)
        if wrong is None and OUTCOME[name] == "error" and run.code == 0:
            wrong = "accepted"
        if wrong:
            problems.append(f"{name} via {' '.join(run.argv[:4])}: {wrong}\n{run.describe()}")
    assert not problems, f"{len(problems)} of {len(text_runs)} runs:\n" + "\n".join(problems)


def test_error_lines_stay_short(tmp_path, capsys):
    """An error quoting a huge input (a 3 MB template without '{}') is cut, not printed whole."""
    from clipforge.cli.errors import MAX_MESSAGE_CHARS
    from clipforge.cli.main import main as cli

    templates = tmp_path / "templates.txt"
    templates.write_text("x" * 3_000_000 + "\n")
    image = tmp_path / "red.png"
    Image.new("RGB", (8, 8)).save(image)
    code = cli(["classify", str(image), "--labels", "a", "--templates", str(templates), "--model", "tiny-vit"])
    err = capsys.readouterr().err
    assert code == 2
    line = next(line for line in err.splitlines() if line.startswith("clipforge classify: error: "))
    assert len(line) < MAX_MESSAGE_CHARS + 200 and "more characters" in line, len(line)
