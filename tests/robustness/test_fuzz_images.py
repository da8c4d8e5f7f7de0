"""The bad-image corpus through the loader, `classify`, `embed` and `eval` (folder and CSV datasets).

Every command gets all the bad images in one run, next to the valid odd ones; it must exit 0 with exactly the
bad ones skipped and each named, within the time limit, without a traceback (see runner.verdict).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

from clipforge.image import ImageLoadError, load_image
from robustness.corpus import is_fifo
from robustness.runner import run_cli, verdict

MIN_BAD_IMAGES = 60


def _bad(images) -> set[str]:
    return {item.arg for item in images if item.expect != "valid"}


def test_corpus_is_large_enough(images):
    kinds = {item.kind for item in images}
    assert len(images) >= MIN_BAD_IMAGES, len(images)
    for kind in ("truncated", "zero-byte", "random-bytes", "pixel-bomb", "aspect-bomb", "fifo", "directory",
                 "symlink-loop", "device", "eps", "odd-mode", "non-utf8-name", "long-name"):
        assert kind in kinds, kind


def test_loader_refuses_or_converts_every_image(images):
    """load_image on each path (as str, the way os.listdir and argv give non-UTF-8 names): an OSError for the
    refused ones (never another exception type), an RGB image for the valid ones."""
    problems = []
    for item in images:
        try:
            image = load_image(item.arg)
        except OSError as exc:
            if item.expect == "valid":
                problems.append(f"{item.name}: valid image refused: {exc}")
            elif item.expect == "refused" and not str(exc):
                problems.append(f"{item.name}: refused without a message")
            continue
        except Exception as exc:  # noqa: BLE001 - the point of the test
            problems.append(f"{item.name}: {type(exc).__name__} escaped load_image: {exc}")
            continue
        if item.expect == "refused":
            problems.append(f"{item.name}: loaded ({image.mode} {image.size}) but is broken")
        elif image.mode != "RGB":
            problems.append(f"{item.name}: mode {image.mode}, want RGB")
    assert not problems, "\n".join(problems)


def test_loader_errors_name_the_file(images):
    """A user with thousands of files must see which one failed: the message (or the OSError's filename)."""
    unnamed = []
    for item in images:
        if item.expect != "refused":
            continue
        try:
            load_image(item.arg)
        except OSError as exc:
            where = str(exc) if isinstance(exc, ImageLoadError) else os.fsdecode(exc.filename or "")
            if os.path.basename(item.arg) not in where:
                unnamed.append(f"{item.name}: {exc}")
    assert not unnamed, "\n".join(unnamed)


def _jsonl(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def test_classify_skips_exactly_the_bad_images(images, saved_model):
    args = [item.arg for item in images]
    run = run_cli("classify", *args, "--labels", "red,blue", "--pretrained", saved_model, "--batch-size", "16")
    assert verdict(run, allow_error=False) is None, f"{verdict(run, allow_error=False)}\n{run.describe()}"
    records = _jsonl(run.stdout)
    assert [r["image"] for r in records] == args  # one line per input, in input order
    failed = {r["image"] for r in records if "error" in r}
    bad = _bad(images)
    assert failed == bad, f"skipped but valid: {sorted(failed - bad)}; kept but bad: {sorted(bad - failed)}"
    for record in records:
        if "error" not in record:
            assert abs(sum(k["prob"] for k in record["top_k"]) - 1) < 1e-3, record
    assert f"and {len(bad) - 20} more skipped image(s)" in run.stderr, run.stderr[-2000:]


def test_embed_skips_exactly_the_bad_images(images, saved_model, tmp_path):
    import numpy as np

    out = tmp_path / "emb.npy"
    args = [item.arg for item in images]
    run = run_cli("embed", "--images", *args, "--out", str(out), "--pretrained", saved_model, "--batch-size", "16")
    assert verdict(run, allow_error=False) is None, f"{verdict(run, allow_error=False)}\n{run.describe()}"
    meta = json.loads(out.with_suffix(".npy.json").read_text())
    bad = _bad(images)
    assert {s["image"] for s in meta["skipped"]} == bad
    assert all(s["error"] for s in meta["skipped"])
    assert meta["rows"] == [a for a in args if a not in bad]
    array = np.load(out)
    assert array.shape[0] == len(args) - len(bad) and np.isfinite(array).all()
    listed = [json.loads(line) for line in (tmp_path / "emb.npy.skipped.jsonl").read_text().splitlines()]
    assert len(listed) == len(bad)
    assert f"skipped {len(bad)} input(s)" in run.stdout


def _eval_tree(images, root: Path) -> tuple[Path, set[str]]:
    """ROOT/test/{red,blue}/... with every image of the corpus (non-regular files re-created, not copied);
    returns the root and the names that must be counted as skipped."""
    bad = set()
    for index, item in enumerate(images):
        target = root / "test" / ("red" if index % 2 else "blue")
        target.mkdir(parents=True, exist_ok=True)
        name = os.path.basename(item.arg)
        dest = target / name
        source = item.arg
        if os.path.islink(source):
            os.symlink(os.readlink(source), dest)
        elif is_fifo(source):
            os.mkfifo(dest)
        elif os.path.isdir(source):
            dest.mkdir()
        else:
            shutil.copyfile(source, dest)
        if item.expect != "valid":
            bad.add(name)
    return root, bad


def _eval_skipped(out: Path) -> tuple[int, set[str]]:
    """(how many images eval skipped, the file names it lists) from results.json; a long list may be cut,
    with the rest counted in "skipped_not_listed"."""
    records = json.loads((out / "results.json").read_text())
    found = [r for r in records if r.get("metric") == "skipped_images"]
    assert found, f"no skipped_images record in {out / 'results.json'}"
    count, names = int(found[0]["value"]), {os.path.basename(e["path"]) for e in found[0].get("skipped", [])}
    assert count == len(found[0].get("skipped", [])) + found[0].get("skipped_not_listed", 0), found[0]
    return count, names


def test_eval_folder_dataset_counts_the_bad_images(images, saved_model, tmp_path):
    root, bad = _eval_tree(images, tmp_path / "data")
    out = tmp_path / "report"
    run = run_cli("eval", "--pretrained", saved_model, "--dataset", "folder", "--root", str(root), "--task",
                  "zeroshot", "--out", str(out), "--cache-dir", "none", "--workers", "0", "--no-plots")
    assert verdict(run, allow_error=False) is None, f"{verdict(run, allow_error=False)}\n{run.describe()}"
    count, listed = _eval_skipped(out)
    # Every bad entry is skipped and named, FIFOs, devices and links included; only a folder named like an image
    # is not an image candidate at all (the scan walks into it).
    folders = {name for name in bad if any((root / "test" / c / name).is_dir() for c in ("red", "blue"))}
    assert listed <= bad, f"valid but skipped: {sorted(listed - bad)}"
    assert count == len(bad - folders), (count, sorted(bad - folders - listed))
    if len(listed) == count:
        assert listed == bad - folders, f"not skipped: {sorted(bad - folders - listed)}"


def test_eval_csv_dataset_counts_the_bad_images(images, saved_model, tmp_path):
    """A CSV (UTF-8, so without the non-UTF-8 name; without the newline name) listing every other image."""
    listed = [i for i in images if "\n" not in i.arg and i.kind != "non-utf8-name"]
    table = tmp_path / "test.csv"
    with table.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"])
        writer.writerows([item.arg, "red" if index % 2 else "blue"] for index, item in enumerate(listed))
    out = tmp_path / "report"
    run = run_cli("eval", "--pretrained", saved_model, "--dataset", "csv", "--root", str(table), "--task",
                  "zeroshot", "--out", str(out), "--cache-dir", "none", "--workers", "0", "--no-plots")
    assert verdict(run, allow_error=False) is None, f"{verdict(run, allow_error=False)}\n{run.describe()}"
    count, names = _eval_skipped(out)
    bad = {os.path.basename(i.arg) for i in listed if i.expect != "valid"}
    assert count == len(bad), (count, len(bad))
    assert names <= bad, f"valid but skipped: {sorted(names - bad)}"
