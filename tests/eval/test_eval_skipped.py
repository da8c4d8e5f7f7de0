"""The report names the images evaluation skipped, and why (issue 8, "eval lists skipped images").

Before, results.json held only a count: a user could not find the files to fix. Now each encoded split has a
`skipped_images` record listing (path, reason), capped at MAX_LISTED_SKIPS with the rest counted, and
results.md lists them once per (dataset, split).
"""

import json

from clipforge.cli.main import main as cli
from clipforge.eval import tasks
from clipforge.eval.runner import run_evaluations
from clipforge.eval.tasks import EvalRequest
from support.noise_images import write_noise_folder


def _folder_with_bad_files(root):
    paths = write_noise_folder(root, classes=2, per_class=4)
    paths[1].write_bytes(b"")  # empty file
    paths[6].write_bytes(b"\x89PNG\r\n\x1a\n garbage")  # a PNG signature, then nothing readable
    return [str(paths[1]), str(paths[6])]


def test_results_list_each_skipped_image_with_its_reason(tmp_path, tiny_model):
    bad = _folder_with_bad_files(tmp_path / "imgs")
    requests = [
        EvalRequest("zeroshot", "folder", root=str(tmp_path / "imgs")),
        EvalRequest("linear_probe", "folder", root=str(tmp_path / "imgs")),
    ]
    records = run_evaluations({"tiny": tiny_model}, requests, tmp_path / "out", plots=False, progress=False)
    zeroshot = next(r for r in records if r["task"] == "zeroshot" and r["metric"] == "skipped_images")
    assert zeroshot["value"] == 2 and zeroshot["skipped_not_listed"] == 0
    assert [s["path"] for s in zeroshot["skipped"]] == bad
    assert all(s["reason"] for s in zeroshot["skipped"])
    probe = [r for r in records if r["task"] == "linear_probe" and r["metric"] == "skipped_images"]
    assert sorted(s["path"] for r in probe for s in r["skipped"]) == bad  # each in the carved half it fell in
    assert sum(r["value"] for r in probe) == 2

    assert json.loads((tmp_path / "out" / "results.json").read_text()) == records
    markdown = (tmp_path / "out" / "results.md").read_text()
    section = markdown[markdown.index("## skipped images") :]
    assert "folder / test: 2 skipped (read by tiny zeroshot)" in section
    assert all(f"`{path}`" in section for path in bad)


def test_the_list_is_capped_and_the_rest_counted(tmp_path, tiny_model, monkeypatch):
    bad = _folder_with_bad_files(tmp_path / "imgs")
    monkeypatch.setattr(tasks, "MAX_LISTED_SKIPS", 1)
    records = run_evaluations(
        {"tiny": tiny_model},
        [EvalRequest("zeroshot", "folder", root=str(tmp_path / "imgs"))],
        tmp_path / "out",
        plots=False,
        progress=False,
    )
    record = next(r for r in records if r["metric"] == "skipped_images")
    assert record["value"] == 2 and [s["path"] for s in record["skipped"]] == bad[:1]
    assert record["skipped_not_listed"] == 1
    assert "- ... and 1 more not listed" in (tmp_path / "out" / "results.md").read_text()


def test_cli_prints_the_skipped_images(tmp_path, capsys):
    bad = _folder_with_bad_files(tmp_path / "imgs")
    args = ["eval", "--model", "tiny-vit", "--dataset", "folder", "--root", str(tmp_path / "imgs")]
    args += ["--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"), "--no-plots", "--no-progress"]
    args += ["--workers", "0"]
    assert cli(args) == 0
    first = capsys.readouterr().out
    assert all(f"`{path}`" in first for path in bad)
    assert cli(args) == 0  # from the feature cache: the same list
    again = capsys.readouterr().out
    assert all(f"`{path}`" in again for path in bad)
