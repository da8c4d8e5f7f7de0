"""Evaluation runs the model under the autocast the user asked for (issue 8, part 18).

Switching autocast off in zero-shot evaluation broke no test: the scores of a tiny model barely move. These
tests record, inside every encode_image / encode_text call, whether autocast is on and in which dtype, so
a dropped or mis-scoped autocast fails them whatever the scores.
"""

import pytest
import torch

import clipforge
from clipforge.eval import zeroshot_evaluate
from clipforge.eval.tasks import EvalContext, EvalRequest, run_task
from support.noise_images import write_noise_folder


@pytest.fixture
def recording_model():
    """A tiny model whose encoders log (autocast enabled, autocast dtype) at every call."""
    torch.manual_seed(0)
    model = clipforge.create_model("tiny-vit")
    calls = {"image": [], "text": []}

    def record(kind, encode):
        def wrapped(*args, **kwargs):
            calls[kind].append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
            return encode(*args, **kwargs)

        return wrapped

    model.encode_image = record("image", model.encode_image)
    model.encode_text = record("text", model.encode_text)
    return model, calls


def _assert_all(calls, enabled, dtype=torch.bfloat16):
    assert calls["image"] and calls["text"], calls
    for kind, seen in calls.items():
        assert all(on == enabled for on, _ in seen), f"{kind}: autocast {'off' if enabled else 'on'} in {seen}"
        if enabled:
            assert all(d == dtype for _, d in seen), f"{kind}: autocast dtype {seen}"


@pytest.mark.parametrize("dtype", [torch.bfloat16, None])
def test_zeroshot_task_encodes_images_and_prompts_under_the_requested_autocast(tmp_path, recording_model, dtype):
    model, calls = recording_model
    write_noise_folder(tmp_path / "imgs", classes=2, per_class=2)
    request = EvalRequest("zeroshot", "folder", root=str(tmp_path / "imgs"))
    run_task(model, request, EvalContext("m", dtype=dtype, progress=False))
    _assert_all(calls, enabled=dtype is not None)


def test_zeroshot_task_with_descriptions_uses_the_autocast_too(tmp_path, recording_model):
    model, calls = recording_model
    write_noise_folder(tmp_path / "imgs", classes=2, per_class=2)
    described = tmp_path / "described.json"
    described.write_text('{"class 0": ["a zero"], "class 1": ["a one"]}')
    request = EvalRequest("zeroshot", "folder", root=str(tmp_path / "imgs"), descriptions=str(described))
    run_task(model, request, EvalContext("m", dtype=torch.bfloat16, progress=False))
    _assert_all(calls, enabled=True)


def test_retrieval_task_uses_the_autocast(tmp_path, recording_model):
    model, calls = recording_model
    paths = write_noise_folder(tmp_path / "imgs", classes=1, per_class=3)
    csv = tmp_path / "caps.csv"
    csv.write_text("path,caption\n" + "".join(f"{p},noise number {i}\n" for i, p in enumerate(paths)))
    ctx = EvalContext("m", dtype=torch.bfloat16, progress=False)
    run_task(model, EvalRequest("retrieval", "csv", root=str(csv)), ctx)
    _assert_all(calls, enabled=True)


def test_zeroshot_evaluate_uses_the_autocast(recording_model):
    model, calls = recording_model
    images = torch.randn(4, 3, model.image_size, model.image_size)
    tokenizer = clipforge.get_tokenizer(model)
    zeroshot_evaluate(model, tokenizer, images, [0, 1, 0, 1], ["a", "b"], ["{}"], dtype=torch.bfloat16)
    _assert_all(calls, enabled=True)
