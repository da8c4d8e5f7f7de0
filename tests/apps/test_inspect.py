"""The inspection workflow (clipforge.apps.inspect + `clipforge inspect`): fit -> save -> load -> run gives the same
records; the report's numbers agree with each other and with coverage_report; the CLI end to end (JSONL, CSV);
unreadable inputs are skipped and reported; too few images per class give a clear error or warning.

tiny-vit has random weights, so decisions may be anything: these tests check the plumbing and the arithmetic."""

from __future__ import annotations

import csv
import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import clipforge
from clipforge.apps.inspect import ConformalCalibrator, coverage_report, fit_inspector, load_inspector
from clipforge.apps.inspect.report import coverage_curve, inspection_metrics, roc_curve, write_report
from clipforge.cli.inspect import main as inspect_main

COLOURS = {"nominal": (200, 200, 200), "local_defect": (200, 30, 30), "global_defect": (30, 30, 200)}


def _examples(root: Path, per_class: int = 10, classes: dict = COLOURS) -> Path:
    rng = np.random.default_rng(0)
    for name, colour in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            noise = rng.integers(-25, 25, (32, 32, 3))
            Image.fromarray(np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8)).save(root / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return clipforge.create_model("tiny-vit")


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, model):
    root = _examples(tmp_path_factory.mktemp("examples"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # 3 calibration images per class: +inf thresholds at 0.1
        inspector = fit_inspector(model, root, seed=1)
    return root, inspector


def test_split_is_stratified_and_disjoint(fitted):
    root, inspector = fitted
    assert inspector.classnames == ("global_defect", "local_defect", "nominal")
    assert torch.bincount(inspector.calibration.labels).tolist() == [3, 3, 3]  # round(0.3 * 10) per class
    assert torch.bincount(inspector.support.labels).tolist() == [7, 7, 7]
    assert not set(inspector.support_paths) & set(inspector.calibration_paths)
    for path, label in zip(inspector.support_paths, inspector.support.labels):
        assert Path(path).parent.name == inspector.classnames[int(label)]


def test_fit_save_load_run_round_trip(fitted, tmp_path):
    root, inspector = fitted
    images = [str(root / "nominal" / "0.png"), str(root / "local_defect" / "3.png")]
    records = inspector.run(images)
    assert [r["image"] for r in records] == images
    for r in records:
        assert r["decision"] in inspector.classnames and r["decision"] in r["prediction_set"]
        assert r["confidence"] == max(r["probabilities"].values())
        assert abs(sum(r["probabilities"].values()) - 1) < 1e-5
        assert len(r["nearest"]) == 3
        sims = [n["similarity"] for n in r["nearest"]]
        assert sims == sorted(sims, reverse=True) and all(n["image"] in inspector.support_paths for n in r["nearest"])
    inspector.save(tmp_path / "insp")
    assert (tmp_path / "insp" / "model").is_dir()  # random weights: the model travels with the inspector
    loaded = load_inspector(tmp_path / "insp")
    assert loaded.run(images) == records
    assert loaded.conformal == inspector.conformal and loaded.config == inspector.config


def test_load_refuses_another_model(fitted, tmp_path):
    _, inspector = fitted
    inspector.save(tmp_path / "insp")
    other = clipforge.create_model("tiny-vit")
    with pytest.raises(ValueError, match="weights differ"):
        load_inspector(tmp_path / "insp", model=other)


def test_nearest_for_a_method_without_nearest(fitted, model):
    root, _ = fitted
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        inspector = fit_inspector(model, root, method="prototype", alpha=0.3, mode="global")
    features = inspector.calibration.features[:2]
    sims, idx = inspector.nearest(features)
    expected = (features @ inspector.support.features.T).topk(3, dim=-1)
    assert torch.equal(idx, expected.indices)


def test_report_numbers_are_consistent(fitted, tmp_path):
    _, inspector = fitted
    metrics = inspection_metrics(inspector, repeats=4, curve_repeats=2)
    confusion = torch.tensor(metrics["confusion"])
    assert confusion.sum() == metrics["n"] == 9
    assert metrics["accuracy"] == pytest.approx(float(confusion.trace()) / 9)
    probs = inspector.probabilities(inspector.calibration.features)
    correct = (probs.argmax(-1) == inspector.calibration.labels).double()
    assert metrics["accuracy"] == pytest.approx(float(correct.mean()))
    # one-vs-rest against the nominal class: sensitivity = recall of the defect row
    nominal = inspector.classnames.index("nominal")
    assert metrics["nominal"] == "nominal" and set(metrics["per_class"]) == {"global_defect", "local_defect"}
    for name, row in metrics["per_class"].items():
        k = inspector.classnames.index(name)
        assert row["sensitivity"] == pytest.approx(confusion[k, k].item() / confusion[k].sum().item())
        assert row["specificity"] == pytest.approx(1 - confusion[nominal, k].item() / confusion[nominal].sum().item())
    in_sample = coverage_report(inspector.conformal.predict_sets(probs), inspector.calibration.labels)
    assert metrics["conformal"]["in_sample"] == in_sample
    assert [r["alpha"] for r in metrics["coverage_vs_alpha"]][0] == 0.01
    assert metrics["learning_curve"][-1]["per_class"] == 7 and metrics["learning_curve"][0]["per_class"] == 1
    path = write_report(inspector, tmp_path / "report", repeats=2, curve_repeats=1)
    text = path.read_text()
    assert "Accuracy" in text and "learning curve" in text.lower()
    saved = json.loads((tmp_path / "report" / "report.json").read_text())
    assert saved["confusion"] == metrics["confusion"]
    for png in ("confusion.png", "roc.png", "coverage.png", "learning_curve.png"):
        assert (tmp_path / "report" / png).stat().st_size > 0


def test_coverage_curve_matches_coverage_report():
    gen = torch.Generator().manual_seed(0)
    probs = torch.randn(40, 3, generator=gen).softmax(-1).double()
    labels = torch.randint(0, 3, (40,), generator=gen)
    [row] = coverage_curve(probs, labels, (0.2,), mode="global", repeats=1, seed=5)
    perm = torch.randperm(40, generator=torch.Generator().manual_seed(5))
    predictor = ConformalCalibrator.fit(probs[perm[:20]], labels[perm[:20]], 0.2, mode="global")
    expected = coverage_report(predictor.predict_sets(probs[perm[20:]]), labels[perm[20:]])
    assert row["coverage"] == expected["coverage"] and row["mean_set_size"] == expected["mean_set_size"]


def test_roc_auc_known_answer():
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5, 0.5])
    positive = torch.tensor([True, False, True, False, True, False])
    # pairs (pos > neg): 0.9 beats 3, 0.7 beats 2, 0.5 ties one -> (3 + 2 + 0.5) / 9
    assert roc_curve(scores, positive)[2] == pytest.approx(5.5 / 9)
    assert roc_curve(scores, torch.ones(6, dtype=torch.bool))[2] is None


def test_too_few_images_per_class(tmp_path, model):
    root = _examples(tmp_path / "one", per_class=1, classes={"nominal": (200, 200, 200), "scratch": (9, 9, 9)})
    with pytest.raises(ValueError, match="'nominal' has 1 readable example"):
        fit_inspector(model, root)
    root = _examples(tmp_path / "few", per_class=4, classes={"nominal": (200, 200, 200), "scratch": (9, 9, 9)})
    with pytest.warns(UserWarning, match="too few calibration examples"):
        fit_inspector(model, root)


def _write_model(tmp_path: Path, model) -> str:
    from clipforge.weights.loading import save_model

    return str(save_model(model, tmp_path / "ckpt"))


def test_cli_fit_and_run_jsonl_csv_with_bad_inputs(tmp_path, model, capsys):
    root = _examples(tmp_path / "examples", per_class=6)
    descriptions = tmp_path / "desc.json"
    descriptions.write_text(json.dumps({"local_defect": "a grey fabric with a red stain"}))
    ckpt = _write_model(tmp_path, model)
    out = tmp_path / "insp"
    rc = inspect_main(
        ["fit", str(root), "--out", str(out), "--pretrained", ckpt, "--device", "cpu", "--alpha", "0.3",
         "--descriptions", str(descriptions)]
    )
    assert rc == 0, capsys.readouterr().err
    assert (out / "report" / "report.md").is_file() and not (out / "model").exists()  # weights named by path
    assert json.loads((out / "inspector.json").read_text())["descriptions"] == {
        "local_defect": "a grey fabric with a red stain"
    }
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"not a png")
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    images = [str(root / "nominal" / "1.png"), str(corrupt), str(fifo), str(root / "global_defect")]
    capsys.readouterr()
    assert inspect_main(["run", str(out), *images, "--out", str(tmp_path / "r.jsonl"), "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "corrupt.png" in err and "pipe.png" in err
    records = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert len(records) == 3 + 6  # the folder expands to its 6 images
    assert "error" in records[1] and "error" in records[2]
    good = [r for r in records if "error" not in r]
    assert all(r["decision"] in r["prediction_set"] and len(r["nearest"]) == 3 for r in good)
    assert inspect_main(["run", str(out), *images, "--out", str(tmp_path / "r.csv"), "--device", "cpu"]) == 0
    rows = list(csv.DictReader((tmp_path / "r.csv").open()))
    assert [r["image"] for r in rows] == [r["image"] for r in records]
    assert [r["decision"] for r in rows] == [r.get("decision", "") for r in records]
    assert rows[1]["error"] and rows[0]["prediction_set"].split(";") == records[0]["prediction_set"]


def test_cli_errors(tmp_path, capsys):
    assert inspect_main(["run", str(tmp_path / "missing"), "x.png"]) == 3
    assert "no inspector here" in capsys.readouterr().err
    root = _examples(tmp_path / "examples", per_class=3)
    argv = ["fit", str(root), "--out", str(tmp_path / "o"), "--model", "tiny-vit", "--method", "nope"]
    assert inspect_main(argv) == 2
    assert "not an adapt method" in capsys.readouterr().err
