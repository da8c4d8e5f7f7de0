"""`push_to_hub` (weights/push.py) against a loopback hub that takes uploads (tests/support/hubserver.py).

Each push and each load-back runs in a subprocess with HF_ENDPOINT pointing at the fake hub, set before
huggingface_hub is imported, as a user would set it. Loaded-back embeddings must equal the original's
(float32 tensors are copied exactly; 1e-6 absolute on unit-norm features allows for thread-count effects).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import clipforge
from clipforge.weights import hf_processor, native, openclip
from support.hubserver import FakeHub

TOKEN = "hf_fake_write_token"

PUSH = """
import json, sys, torch, warnings, clipforge
model = clipforge.load_model({model_dir!r})
url = clipforge.push_to_hub(model, {repo!r}, format={fmt!r}, private={private!r}, token={token!r}, **{extra!r})
print(json.dumps({{"url": url}}))
"""

LOAD = """
import sys, torch, clipforge
model = clipforge.load_model("hf-hub:{repo}")
torch.manual_seed(0)
images = torch.randn(2, 3, model.image_size, model.image_size)
tokens = clipforge.get_tokenizer(model)(["a pushed model", "another caption"])
with torch.no_grad():
    out = {{"i": model.encode_image(images, normalize=True), "t": model.encode_text(tokens, normalize=True)}}
out["preprocess"] = torch.tensor([model.config.preprocess.size, *model.config.preprocess.mean])
torch.save(out, {out!r})
"""


def _run(code: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def _env(url: str, tmp_path) -> dict[str, str]:
    return {
        "HF_ENDPOINT": url,
        "HF_HUB_CACHE": str(tmp_path / "cache"),
        "HF_HOME": str(tmp_path / "hf_home"),  # no stored login from the machine
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_XET": "1",
    }


def _model(tmp_path):
    torch.manual_seed(0)
    model = clipforge.create_model("tiny-vit", preprocess={"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.2, 0.2]})
    folder = tmp_path / "model"
    clipforge.save_model(model, folder)
    return model, folder


def _reference(model):
    torch.manual_seed(0)
    images = torch.randn(2, 3, model.image_size, model.image_size)
    tokens = clipforge.get_tokenizer(model)(["a pushed model", "another caption"])
    with torch.no_grad():
        return model.encode_image(images, normalize=True), model.encode_text(tokens, normalize=True)


EXPECTED_FILES = {
    "hf": {"config.json", "model.safetensors", hf_processor.PREPROCESSOR_NAME, *hf_processor.TOKENIZER_FILES},
    "openclip": {openclip.CONFIG_NAME, openclip.SAFE_WEIGHTS_NAME},
    "clipforge": {native.CONFIG_NAME, native.WEIGHTS_NAME},
}


@pytest.mark.parametrize("fmt", ["hf", "openclip", "clipforge"])
def test_push_then_load_back_gives_the_same_model(tmp_path, fmt):
    model, model_dir = _model(tmp_path)
    repo = f"someone/tiny-{fmt}"
    hub = FakeHub({}, upload_root=tmp_path / "hub", tokens={TOKEN})
    with hub as url:
        env = _env(url, tmp_path)
        code = PUSH.format(model_dir=str(model_dir), repo=repo, fmt=fmt, private=True, token=TOKEN, extra={})
        pushed = _run(code, env)
        assert pushed.returncode == 0, pushed.stderr[-3000:]
        assert json.loads(pushed.stdout.strip().splitlines()[-1])["url"].startswith(f"{url}/{repo}/commit/")

        # recent huggingface_hub sends "visibility", older releases (such as the 0.25 floor) "private"
        assert hub.created[repo].get("visibility") == "private" or hub.created[repo].get("private") is True
        (commit,) = hub.commits
        assert commit["repo"] == repo and commit["summary"] == f"Upload CLIP model ({fmt} format) with clipforge"
        assert set(commit["files"]) == EXPECTED_FILES[fmt]
        assert {p.name for p in (tmp_path / "hub" / repo).iterdir()} == EXPECTED_FILES[fmt]

        out = tmp_path / "features.pt"
        loaded = _run(LOAD.format(repo=repo, out=str(out)), env)
        assert loaded.returncode == 0, loaded.stderr[-3000:]
    got = torch.load(out, weights_only=True)
    ref_i, ref_t = _reference(model)
    torch.testing.assert_close(got["i"], ref_i, rtol=0, atol=1e-6)
    torch.testing.assert_close(got["t"], ref_t, rtol=0, atol=1e-6)
    pre = model.config.preprocess
    torch.testing.assert_close(got["preprocess"], torch.tensor([pre.size, *pre.mean]))  # the hub copy keeps it


def test_push_to_existing_repo_adds_a_commit_with_the_given_message(tmp_path):
    model, model_dir = _model(tmp_path)
    repo = "someone/tiny"
    hub = FakeHub({}, upload_root=tmp_path / "hub", tokens={TOKEN})
    with hub as url:
        env = _env(url, tmp_path)
        for message in ("first", "second"):
            extra = {"commit_message": message}
            code = PUSH.format(model_dir=str(model_dir), repo=repo, fmt="hf", private=False, token=TOKEN, extra=extra)
            result = _run(code, env)
            assert result.returncode == 0, result.stderr[-3000:]
    assert [c["summary"] for c in hub.commits] == ["first", "second"]
    assert list(hub.created) == [repo]  # the second push found the repository (409) and went on
    assert "visibility" not in hub.created[repo] or hub.created[repo]["visibility"] == "public"


def test_bad_token_is_a_clear_error(tmp_path):
    _, model_dir = _model(tmp_path)
    hub = FakeHub({}, upload_root=tmp_path / "hub", tokens={TOKEN})
    with hub as url:
        code = PUSH.format(model_dir=str(model_dir), repo="someone/x", fmt="hf", private=False, token="bad", extra={})
        result = _run(code, _env(url, tmp_path))
    assert result.returncode != 0
    assert "HubUploadError" in result.stderr and "'someone/x'" in result.stderr and "HTTP 401" in result.stderr
    assert "token" in result.stderr.splitlines()[-1]
    assert hub.commits == []


def test_arguments_are_checked_before_any_upload():
    model = clipforge.create_model("tiny-vit")
    with pytest.raises(ValueError, match="org/name"):
        clipforge.push_to_hub(model, "just-a-name")
    with pytest.raises(ValueError, match="unknown format"):
        clipforge.push_to_hub(model, "org/name", format="onnx")
    with pytest.raises(TypeError, match="clipforge CLIP model"):
        clipforge.push_to_hub({"not": "a model"}, "org/name")
