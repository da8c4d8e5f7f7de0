"""The WiSE-FT sweep report: endpoints equal zero-shot evaluation of the two models, files, choice rule, CLI."""

import json

import numpy as np
import pytest
import torch

import clipforge
from clipforge.adapt.wise_ft_report import EncodingSettings, IncompatibleModelsError, wise_ft_report
from clipforge.cli.main import main as cli
from clipforge.eval.datasets.base import ArrayImages, ClassificationSet, fingerprint
from clipforge.eval.shifts import shift_dataset
from clipforge.eval.zeroshot import zeroshot_evaluate
from clipforge.factory import get_preprocess, get_tokenizer
from clipforge.models import CLIP
from clipforge.weights.loading import save_model

CLASSES = ("circle", "square", "stripe")
TEMPLATES = ("a photo of a {}.", "a drawing of a {}.")


def _toy_set(n: int = 48, seed: int = 0, split: str = "test") -> ClassificationSet:
    """Synthetic 32 px images of three patterns (plus noise), so the image tower's features carry the class."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:32, :32]
    patterns = [((yy - 16) ** 2 + (xx - 16) ** 2 < 90), (abs(yy - 16) < 8) & (abs(xx - 16) < 8), (xx // 4) % 2 == 0]
    labels = [i % 3 for i in range(n)]
    array = np.stack([patterns[c] * 200.0 + rng.normal(20, 15, (32, 32)) for c in labels]).clip(0, 255)
    array = np.repeat(array[..., None], 3, axis=-1).astype(np.uint8)  # (N, 32, 32, 3)
    return ClassificationSet(
        name="toy",
        split=split,
        classnames=CLASSES,
        templates=TEMPLATES,
        labels=tuple(labels),
        fingerprint=fingerprint("toy", split, f"/toy{seed}", [str(i) for i in range(n)]),
        images=ArrayImages(array, f"toy/{split}"),
    )


@pytest.fixture(scope="module")
def pair() -> tuple[CLIP, CLIP]:
    """A tiny zero-shot model and a 'fine-tuned' copy whose image tower moved (text tower untouched)."""
    torch.manual_seed(0)
    zero_shot = clipforge.create_model("tiny-vit").eval()
    fine_tuned = clipforge.create_model("tiny-vit").eval()
    fine_tuned.load_state_dict(zero_shot.state_dict())
    with torch.no_grad():
        for param in fine_tuned.visual.parameters():
            param.add_(0.5 * torch.randn_like(param) * param.std().nan_to_num(0.02).clamp_min(0.02))
    return zero_shot, fine_tuned


def _reference_top1(model: CLIP, dataset) -> float:
    """top-1 of the library's own zero-shot evaluation (eval.zeroshot) on the whole set."""
    preprocess = get_preprocess(model)
    images = torch.stack([preprocess(dataset.load(i)) for i in range(len(dataset))])  # (N, 3, H, W)
    labels = torch.tensor([dataset.labels[i] for i in range(len(dataset))])
    return zeroshot_evaluate(model, get_tokenizer(model), images, labels, CLASSES, TEMPLATES)["top1"]


def test_endpoints_equal_zero_shot_evaluation_of_each_model(pair, tmp_path):
    zero_shot, fine_tuned = pair
    test = _toy_set()
    ood = {"invert": shift_dataset(test, "invert"), "rotate90": shift_dataset(test, "rotate90")}
    report = wise_ft_report(
        zero_shot, fine_tuned, [1.0, 0.0, 0.5], test, ood, settings=EncodingSettings(cache_dir=tmp_path / "c")
    )
    assert [r.alpha for r in report.rows] == [0.0, 0.5, 1.0]
    one = 1 / len(test)  # a near-tie decided the other way by a different summation order moves one image
    for alpha, model in ((0.0, zero_shot), (1.0, fine_tuned)):
        row = report.row(alpha)
        assert row.id_accuracy == pytest.approx(_reference_top1(model, test), abs=one + 1e-9), f"alpha {alpha} ID"
        for name, dataset in ood.items():
            want = _reference_top1(model, dataset)
            assert row.ood_accuracy[name] == pytest.approx(want, abs=one + 1e-9), f"alpha {alpha} {name}"
        assert row.mean_ood_accuracy == pytest.approx(sum(row.ood_accuracy.values()) / 2)
    # the two endpoints are different models, so swapping them would be seen
    ends = [(r.id_accuracy, *r.ood_accuracy.values()) for r in (report.row(0.0), report.row(1.0))]
    assert max(abs(a - b) for a, b in zip(*ends)) > 2 * one
    assert report.images == {"toy test": 48, "invert": 48, "rotate90": 48}
    assert report.chosen_alpha == 0.5 and report.chosen_by == "paper default" and report.val_name is None


def test_validation_chooses_alpha_and_the_test_sets_never_do(pair):
    zero_shot, fine_tuned = pair
    test, val = _toy_set(), _toy_set(30, seed=5, split="val")
    ood = {"noise": shift_dataset(test, "noise")}
    report = wise_ft_report(zero_shot, fine_tuned, [0, 0.25, 0.5, 0.75, 1], test, ood, val_set=val)
    best = max(r.val_accuracy for r in report.rows)
    chosen = report.row(report.chosen_alpha)
    assert report.chosen_by == "validation" and chosen.val_accuracy == best
    tied = [r.alpha for r in report.rows if r.val_accuracy == best]
    assert report.chosen_alpha == min(tied, key=lambda a: (abs(a - 0.5), a))
    # the choice is a function of the validation column only: another OOD set changes nothing
    other = wise_ft_report(zero_shot, fine_tuned, [0, 0.25, 0.5, 0.75, 1], test, {"blur": shift_dataset(test, "blur")},
                           val_set=val)
    assert other.chosen_alpha == report.chosen_alpha


def test_report_files_json_markdown_and_plot(pair, tmp_path, monkeypatch):
    zero_shot, fine_tuned = pair
    test = _toy_set(24)
    report = wise_ft_report(zero_shot, fine_tuned, [0, 0.5, 1], test, {"invert": shift_dataset(test, "invert")},
                            model_names=("base", "tuned"))
    written = report.write(tmp_path / "out")
    data = json.loads(written["json"].read_text())
    assert [r["alpha"] for r in data["rows"]] == [0.0, 0.5, 1.0]
    assert data["rows"][2]["ood_accuracy"]["invert"] == report.row(1.0).ood_accuracy["invert"]
    assert data["choice"]["alpha"] == 0.5 and "validation" in data["choice"]["rule"]
    markdown = written["markdown"].read_text()
    assert "| alpha | model | ID: toy test | OOD: invert | mean OOD |" in markdown
    assert "| 0 | base |" in markdown and "| 1 | tuned |" in markdown and "![" in markdown
    assert written["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # without matplotlib: no plot, a note, still JSON and Markdown
    monkeypatch.setitem(__import__("sys").modules, "matplotlib", None)
    written = report.write(tmp_path / "noplot")
    assert written["plot"] is None and not (tmp_path / "noplot" / "wise_ft.png").exists()
    assert "matplotlib" in written["notes"][0] and "matplotlib" in written["markdown"].read_text()
    assert "matplotlib" in json.loads(written["json"].read_text())["notes"][0]


def test_bad_arguments_are_refused(pair):
    zero_shot, fine_tuned = pair
    test = _toy_set(9)
    ood = {"invert": shift_dataset(test, "invert")}
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        wise_ft_report(zero_shot, fine_tuned, [0, 1.5], test, ood)
    with pytest.raises(ValueError, match="repeat"):
        wise_ft_report(zero_shot, fine_tuned, [0.5, 0.5], test, ood)
    with pytest.raises(ValueError, match="out-of-distribution"):
        wise_ft_report(zero_shot, fine_tuned, [0.5], test, {})
    other = ClassificationSet("x", "test", ("a", "b", "c"), TEMPLATES, test.labels, "fp", test.images)
    with pytest.raises(ValueError, match="same classes"):
        wise_ft_report(zero_shot, fine_tuned, [0.5], test, {"x": other})
    with pytest.raises(IncompatibleModelsError, match="same architecture"):
        wise_ft_report(zero_shot, clipforge.create_model("tiny-rn"), [0.5], test, ood)


@pytest.fixture(scope="module")
def saved(pair, tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    zero_shot, fine_tuned = pair
    save_model(zero_shot, root / "zs")
    save_model(fine_tuned, root / "ft")
    save_model(clipforge.create_model("tiny-rn"), root / "rn")
    return root


def _fashion_available() -> bool:
    from clipforge.eval.datasets import DatasetNotFound, load_eval_dataset

    try:
        load_eval_dataset("fashion_mnist", split="test")
    except DatasetNotFound:
        return False
    return True


def test_cli_end_to_end(saved, tmp_path, capsys):
    if not _fashion_available():
        pytest.skip("Fashion-MNIST is not installed (apt install dataset-fashion-mnist)")
    out = tmp_path / "report"
    args = ["eval", "--task", "wise_ft", "--zero-shot", str(saved / "zs"), "--fine-tuned", str(saved / "ft"),
            "--alphas", "0", "0.5", "1", "--dataset", "fashion_mnist", "--ood", "invert", "rotate90",
            "--max-samples", "60", "--out", str(out), "--cache-dir", str(tmp_path / "cache"), "--no-progress",
            "--workers", "0"]
    assert cli(args) == 0
    printed = capsys.readouterr().out
    assert "| alpha | model | ID: fashion_mnist test | OOD: invert | OOD: rotate90 | mean OOD |" in printed
    data = json.loads((out / "wise_ft.json").read_text())
    assert data["sets"]["images"] == {"fashion_mnist test": 60, "invert": 60, "rotate90": 60}
    assert (out / "wise_ft.md").exists() and (out / "wise_ft.png").exists()
    assert cli([*args, "--val-split", "train"]) == 0  # validation from another split chooses alpha
    data = json.loads((out / "wise_ft.json").read_text())
    assert data["choice"]["by"] == "validation" and data["sets"]["val"] == "fashion_mnist train"


@pytest.mark.parametrize(
    ("change", "code", "message"),
    [
        (["--alphas", "0", "1.5"], 2, "--alphas: must be a number in [0, 1]"),
        (["--ood", "sepia"], 2, "'sepia' is neither a distribution shift (invert, rotate90"),
        (["--ood", "fashion_mnist:sepia"], 2, "unknown distribution shift 'sepia'"),
        (["--fine-tuned", "RN"], 4, "same architecture"),
        (["--fine-tuned", "MISSING"], 4, "is not an existing file or folder"),  # as --pretrained MISSING
        (["--task", "wise_ft", "zeroshot"], 2, "--task wise_ft runs alone"),
    ],
)
def test_cli_bad_inputs_give_one_line_and_the_exit_code(saved, tmp_path, capsys, change, code, message):
    base = {"--task": ["wise_ft"], "--zero-shot": [str(saved / "zs")], "--fine-tuned": [str(saved / "ft")],
            "--alphas": ["0", "1"], "--dataset": ["fashion_mnist"], "--ood": ["invert"]}
    base[change[0]] = [c.replace("RN", str(saved / "rn")).replace("MISSING", str(tmp_path / "nope"))
                       for c in change[1:]]
    argv = ["eval", "--out", str(tmp_path / "o"), "--cache-dir", "none", "--no-progress", "--max-samples", "6"]
    for flag, values in base.items():
        argv += [flag, *values]
    assert cli(argv) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and err[0].startswith("clipforge eval: error:")
