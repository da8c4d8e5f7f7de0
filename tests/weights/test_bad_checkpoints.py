"""Every broken or malicious checkpoint is one CheckpointError, and one CLI error line with exit code 4.

The corpus (tests/support/badcheckpoints.py) holds ~65 files and folders: truncations, random bytes,
crafted safetensors headers, pickles calling os.system, a TorchScript code file built to exhaust a
parser, configs with wrong types and a config whose width would allocate tens of GB. Each is run
through `clipforge.load_model` (CheckpointError, nothing else, within SECONDS_PER_CASE) and through
`clipforge classify` / `clipforge embed --pretrained` in-process (exit 4, one line, no traceback).
"""

from __future__ import annotations

import json
import math
import time
import warnings

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import clipforge
from clipforge.cli import errors
from clipforge.cli.common import json_text
from clipforge.cli.main import main as cli
from clipforge.models.config import ConfigError, TextConfig, VisionConfig
from clipforge.weights.formats import CheckpointConfigError, CheckpointError, UnsafeCheckpointError
from clipforge.weights.torchscript import _parse_declarations
from support.badcheckpoints import SECONDS_PER_CASE, build_corpus

MIN_CASES = 40


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return build_corpus(tmp_path_factory.mktemp("bad-checkpoints"))


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("images") / "red.png"
    Image.new("RGB", (40, 30), (200, 20, 20)).save(path)
    return str(path)


def test_corpus_is_large_and_varied(corpus):
    assert len(corpus) >= MIN_CASES
    assert len({c.name for c in corpus}) == len(corpus)
    assert all(c.path.exists() for c in corpus)


def test_load_model_raises_checkpoint_error_for_every_bad_checkpoint(corpus):
    failures = []
    for case in corpus:
        start = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                clipforge.load_model(case.path)
            failures.append(f"{case.name}: loaded without an error")
        except CheckpointError as exc:
            message = str(exc)
            missing = [fragment for fragment in (case.path.name, *case.expect) if fragment not in message]
            if missing:
                failures.append(f"{case.name}: message lacks {missing}: {message}")
        except BaseException as exc:  # noqa: BLE001 - exactly what this test exists to catch
            failures.append(f"{case.name}: {type(exc).__name__}: {exc}")
        took = time.perf_counter() - start
        if took > SECONDS_PER_CASE:
            failures.append(f"{case.name}: took {took:.1f} s")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("command", ["classify", "embed"])
def test_cli_reports_every_bad_checkpoint_in_one_line_with_exit_4(corpus, image, tmp_path, capsys, command):
    failures = []
    for case in corpus:
        if command == "classify":
            argv = ["classify", image, "--labels", "a,b", "--pretrained", str(case.path)]
        else:
            argv = ["embed", "--images", image, "--out", str(tmp_path / "x.npy"), "--pretrained", str(case.path)]
        code = cli(argv)
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.startswith(f"clipforge {command}: error: ")]
        if code != errors.MODEL_ERROR or len(lines) != 1 or "Traceback" in err:
            failures.append(f"{case.name}: exit {code}: {err.strip()[-400:]}")
        elif case.path.name not in lines[0]:
            failures.append(f"{case.name}: the error line does not name the file: {lines[0]}")
    assert not failures, "\n".join(failures)


def test_cli_with_model_and_pretrained_file_also_exit_4(corpus, image, capsys):
    """`--model tiny-vit --pretrained FILE` takes create_model's path (the file must fit that architecture)."""
    for case in corpus[:12] + [c for c in corpus if "nan" in c.name or "os-system" in c.name]:
        code = cli(["classify", image, "--labels", "a,b", "--model", "tiny-vit", "--pretrained", str(case.path)])
        err = capsys.readouterr().err
        assert code == errors.MODEL_ERROR and "Traceback" not in err, (case.name, err)


def test_malicious_pickle_is_refused_as_unsafe_and_never_runs(tmp_path, corpus):
    case = next(c for c in corpus if c.name == "pickle-os-system.pt")
    marker = case.path.parent / "PWNED"
    with pytest.raises(UnsafeCheckpointError) as info:
        clipforge.load_model(case.path)
    message = str(info.value)
    assert "refused as unsafe" in message and "allow_unsafe_pickle" in message
    assert "corrupt" not in message
    assert not marker.exists()


def test_config_errors_from_files_are_both_checkpoint_and_config_errors(corpus):
    case = next(c for c in corpus if c.name == "native-wrong-types")
    with pytest.raises(CheckpointConfigError) as info:
        clipforge.load_model(case.path)
    assert isinstance(info.value, ConfigError) and "vision.layers" in str(info.value)


@pytest.mark.parametrize(
    ("cls", "field", "value"),
    [
        (VisionConfig, "width", "768"),
        (VisionConfig, "layers", True),
        (VisionConfig, "heads", 0),
        (VisionConfig, "mlp_ratio", float("nan")),
        (VisionConfig, "ls_init_value", "0.1"),
        (TextConfig, "layer_norm_eps", "1e-5"),
        (TextConfig, "vocab_size", 49408.0),
        (TextConfig, "causal_mask", "yes"),
        (TextConfig, "heads", -2),
    ],
)
def test_config_fields_of_the_wrong_type_or_sign_name_the_field(cls, field, value):
    with pytest.raises(ConfigError, match=field):
        cls(**{field: value})


def test_config_types_accept_what_the_registry_builds():
    assert VisionConfig(layers=[3, 4, 6, 3], patch_size=None, image_size=224, width=64).layers == (3, 4, 6, 3)
    assert VisionConfig(mlp_ratio=4).mlp_ratio == 4  # an int is a valid float
    clipforge.create_model("tiny-vit")


def test_torchscript_declarations_are_read_in_linear_time_from_a_crafted_code_file():
    real = 'class Linear(Module):\n  __parameters__ = ["weight", "bias", ]\n  __buffers__ = []\n  training : bool\n'
    assert _parse_declarations(real, "Linear") == (["weight", "bias"], [])
    deep = "class Linear(Module):\n  __parameters__ = " + "[" * 1_000_000 + "]" * 1_000_000 + "\n"
    start = time.perf_counter()
    assert _parse_declarations(deep, "Linear") is None  # not a flat list of names: every tensor counts
    assert time.perf_counter() - start < 2.0


def _nan_model_file(tmp_path):
    torch.manual_seed(0)
    model = clipforge.create_model("tiny-vit")
    folder = clipforge.save_model(model, tmp_path / "model")
    weights = folder / "clipforge_model.safetensors"
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    tensors["visual.proj"][0, 0] = float("nan")
    save_file(tensors, str(weights), metadata=metadata)
    return folder


def test_nan_weights_are_refused_naming_the_tensor_with_an_opt_out(tmp_path):
    folder = _nan_model_file(tmp_path)
    with pytest.raises(CheckpointError, match=r"'visual.proj' has 1 non-finite value") as info:
        clipforge.load_model(folder)
    assert "check_finite=False" in str(info.value)
    model = clipforge.load_model(folder, check_finite=False)
    assert torch.isnan(model.visual.proj).sum() == 1
    with pytest.raises(CheckpointError, match="non-finite"):
        clipforge.create_model("tiny-vit", pretrained=str(folder))
    assert torch.isnan(clipforge.create_model("tiny-vit", pretrained=str(folder), check_finite=False).visual.proj).any()


def _strict_json(text: str):
    def refuse(name):
        raise AssertionError(f"{name} is not valid JSON")

    return json.loads(text, parse_constant=refuse)


def test_classify_never_prints_invalid_json_even_with_nan_weights(tmp_path, image, capsys):
    folder = _nan_model_file(tmp_path)
    assert cli(["classify", image, "--labels", "a,b", "--pretrained", str(folder)]) == errors.MODEL_ERROR
    assert "--allow-nonfinite-weights" in capsys.readouterr().err
    for fmt in ("jsonl", "json"):
        argv = ["classify", image, "--labels", "a,b", "--pretrained", str(folder), "--allow-nonfinite-weights"]
        assert cli([*argv, "--format", fmt]) == 0
        captured = capsys.readouterr()
        records = [_strict_json(line) for line in captured.out.splitlines() if line.strip()] if fmt == "jsonl" else [
            _strict_json(captured.out)
        ]
        assert records and "null" in captured.out
        assert "non-finite number(s) written as null" in captured.err


def test_json_text_is_always_strict_json():
    data = {"prob": float("nan"), "top": [1.0, float("inf"), {"x": -math.inf}], "ok": 0.5}
    assert _strict_json(json_text(data)) == {"prob": None, "top": [1.0, None, {"x": None}], "ok": 0.5}
    assert json_text({"a": 1}) == '{"a": 1}'
