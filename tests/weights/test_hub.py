"""Downloads through huggingface_hub from a loopback hub (HF_ENDPOINT), cache, and offline errors.

Each case runs in a subprocess so that HF_ENDPOINT / HF_HUB_OFFLINE / HF_HUB_CACHE are set before
huggingface_hub is imported, exactly as a user would set them.
"""

import os
import subprocess
import sys
import textwrap

import torch

import clipforge
from support.hubserver import FakeHub
from support.tolerance import assert_close_rel


def _run(code: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **env}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=full_env, capture_output=True, text=True, timeout=120
    )


LOAD_AND_SAVE_FEATURES = """
import sys, torch, clipforge
model = clipforge.load_model(sys.argv[1] if len(sys.argv) > 1 else {source!r})
torch.manual_seed(0)
images = torch.randn(2, 3, model.image_size, model.image_size)
tokens = clipforge.get_tokenizer(model)(["a hub test", "another"])
with torch.no_grad():
    torch.save({{"i": model.encode_image(images), "t": model.encode_text(tokens)}}, {out!r})
"""


def _reference(model):
    torch.manual_seed(0)
    images = torch.randn(2, 3, model.image_size, model.image_size)
    tokens = clipforge.get_tokenizer(model)(["a hub test", "another"])
    with torch.no_grad():
        return model.encode_image(images), model.encode_text(tokens)


def test_hub_repos_in_each_layout_download_and_load(tmp_path):
    torch.manual_seed(0)
    model = clipforge.create_model("tiny-vit")
    repos = {}
    for fmt in ("clipforge", "openclip", "hf"):
        clipforge.save_model(model, tmp_path / "repos" / fmt, format=fmt)
        repos[f"org/tiny-{fmt}"] = tmp_path / "repos" / fmt
    ref_i, ref_t = _reference(model)
    with FakeHub(repos) as url:
        env = {"HF_ENDPOINT": url, "HF_HUB_CACHE": str(tmp_path / "cache"), "HF_HUB_DISABLE_TELEMETRY": "1"}
        for repo in repos:
            out = tmp_path / f"{repo.replace('/', '_')}.pt"
            result = _run(LOAD_AND_SAVE_FEATURES.format(source=f"hf-hub:{repo}", out=str(out)), env)
            assert result.returncode == 0, result.stderr[-3000:]
            got = torch.load(out, weights_only=True)
            # same weights, computed in another process (thread count may differ): scale-relative bar
            assert_close_rel(got["i"], ref_i, rel=1e-5, what=f"{repo} image features")
            assert_close_rel(got["t"], ref_t, rel=1e-5, what=f"{repo} text features")
    # Offline afterwards: served from the cache without the server.
    out = tmp_path / "offline.pt"
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "cache"), "HF_ENDPOINT": "http://127.0.0.1:9"}
    result = _run(LOAD_AND_SAVE_FEATURES.format(source="hf-hub:org/tiny-openclip", out=str(out)), env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_close_rel(torch.load(out, weights_only=True)["i"], ref_i, rel=1e-5, what="offline image features")


PRETRAINED_CODE = """
import torch, clipforge
from clipforge.weights import pretrained
entry = pretrained.PretrainedWeights("tiny-vit", "testtag", "org/tiny-tagged", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
pretrained.PRETRAINED = pretrained.PRETRAINED + (entry,)
try:
    model = clipforge.create_model("tiny-vit", pretrained="testtag")
except Exception as exc:
    print("ERROR:", type(exc).__name__, exc)
    raise SystemExit(3)
assert model.config.preprocess.mean == (0.5, 0.5, 0.5), model.config.preprocess
torch.save(model.state_dict(), {out!r})
"""


def test_pretrained_tag_downloads_and_offline_miss_is_a_clear_error(tmp_path):
    torch.manual_seed(0)
    model = clipforge.create_model("tiny-vit")
    clipforge.save_model(model, tmp_path / "repo", format="openclip")
    out = tmp_path / "sd.pt"
    with FakeHub({"org/tiny-tagged": tmp_path / "repo"}) as url:
        env = {"HF_ENDPOINT": url, "HF_HUB_CACHE": str(tmp_path / "cache")}
        result = _run(PRETRAINED_CODE.format(out=str(out)), env)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    got = torch.load(out, weights_only=True)
    for k, v in model.state_dict().items():
        assert torch.equal(got[k], v), k
    # A fresh cache while offline: the error names the tag and the cache folder.
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "empty-cache")}
    result = _run(PRETRAINED_CODE.format(out=str(out)), env)
    assert result.returncode == 3
    assert "tiny-vit:testtag" in result.stdout and str(tmp_path / "empty-cache") in result.stdout, result.stdout


def test_unknown_tag_and_unknown_source_errors():
    import pytest

    with pytest.raises(clipforge.CheckpointError, match="known: "):
        clipforge.create_model("ViT-B-32", pretrained="no_such_tag")
    with pytest.raises(clipforge.CheckpointError, match="not a known pretrained tag"):
        clipforge.load_model("ViT-B-32:no_such_tag")
    with pytest.raises(clipforge.CheckpointError, match="not an existing file or folder"):
        clipforge.load_model("./definitely/not/here.pt")
