"""Every broken or malicious checkpoint of tests/support/badcheckpoints.py through `classify --pretrained`,
`embed --pretrained` and `convert`: exactly one error line, exit 4 (model or checkpoint error), nothing written,
within the time limit. The cases run through clipforge's entry point in one interpreter (runner.run_batch);
a case that hangs or kills it is reported as such and the rest go on in a new one.
"""

from __future__ import annotations

import os

import pytest
from PIL import Image

from clipforge.cli.errors import MODEL_ERROR
from robustness.runner import run_batch, verdict
from support.badcheckpoints import build_corpus

MIN_CHECKPOINTS = 40


@pytest.fixture(scope="module")
def checkpoint_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("badckpt")
    corpus = build_corpus(root / "corpus")
    image = root / "red.png"
    Image.new("RGB", (40, 30), (200, 20, 20)).save(image)
    commands, cases = [], []
    for case in corpus:
        target = str(case.path)
        commands.append(["classify", str(image), "--labels", "a,b", "--pretrained", target, "--no-progress"])
        commands.append(["embed", "--images", str(image), "--out", str(root / f"{case.name}.npy"), "--pretrained",
                         target, "--no-progress"])
        commands.append(["convert", target, str(root / f"converted-{case.name}"), "--to", "clipforge"])
        cases += [case] * 3
    runs = run_batch(commands, root / "batch", timeout=240)
    return corpus, list(zip(cases, runs)), root


def test_corpus_is_large_enough(checkpoint_runs):
    corpus, _, _ = checkpoint_runs
    assert len(corpus) >= MIN_CHECKPOINTS, len(corpus)


def test_every_bad_checkpoint_is_one_clear_model_error(checkpoint_runs):
    _, pairs, root = checkpoint_runs
    problems = []
    for case, run in pairs:
        what = f"{case.name} via {run.command}"
        wrong = verdict(run)
        if wrong is None and run.code != MODEL_ERROR:
            wrong = f"exit {run.code}, want {MODEL_ERROR} (model or checkpoint error)"
        if wrong is None:
            line = run.error_lines()[0]
            missing = [fragment for fragment in case.expect if fragment.lower() not in line.lower()]
            if missing:
                wrong = f"the error line does not say {missing}: {line}"
        if wrong is None and run.command == "embed" and (root / f"{case.name}.npy").exists():
            wrong = "an embedding file was written"
        if wrong is None and run.command == "convert" and os.path.exists(root / f"converted-{case.name}"):
            wrong = "a converted checkpoint was written"
        if wrong:
            problems.append(f"{what}: {wrong}\n{run.describe()}")
    assert not problems, f"{len(problems)} of {len(pairs)} runs:\n" + "\n".join(problems)
