"""SigLIP / SigLIP 2 tokenizers named by hub repository (the named configs' `text.hf_tokenizer_name`, e.g.
"timm/ViT-B-16-SigLIP2"): downloaded through huggingface_hub from a loopback hub (tests/support/hubserver.py,
HF_ENDPOINT), served from the cache offline, and a clear error naming the repository when they cannot be had.

The repository holds a tiny Gemma-style tokenizer (tests/support/gemma_tokenizer.py); clipforge's ids must equal
open_clip's `HFTokenizer(..., clean="canonicalize")` (what open_clip's SigLIP 2 configs ask for) on the
multilingual corpus of these tests (CJK, Arabic, Devanagari, emoji, mojibake, ...). Each download runs in a
subprocess so that HF_ENDPOINT / HF_HUB_OFFLINE / HF_HUB_CACHE are set before huggingface_hub is imported.
"""

import dataclasses
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import clipforge
from clipforge.models import get_model_config
from clipforge.text.hf_tokenizer import HFTokenizer
from support.gemma_tokenizer import CORPUS, EXTRA, make_gemma_folder
from support.hubserver import FakeHub

REPO = "timm/ViT-B-16-SigLIP2"
TOKENIZE = """
import json, sys, torch, clipforge
texts = json.load(open(sys.argv[1], encoding="utf-8"))
try:
    tokenizer = clipforge.get_tokenizer("ViT-B-16-SigLIP2")
except Exception as exc:
    print("ERROR:", type(exc).__name__, exc)
    raise SystemExit(3)
torch.save(tokenizer(texts), sys.argv[2])
print(type(tokenizer).__name__, tokenizer.source)
"""


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(TOKENIZE), *args],
        env={**os.environ, "HF_HUB_DISABLE_TELEMETRY": "1", **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def gemma_repo(tmp_path_factory):
    return make_gemma_folder(tmp_path_factory.mktemp("hub") / "ViT-B-16-SigLIP2")


@pytest.fixture(scope="module")
def texts(corpus):
    return CORPUS + EXTRA + corpus[::10]  # ~620 texts of the shared multilingual corpus


def _open_clip_ids(folder, texts, length=64):
    open_clip = pytest.importorskip("open_clip")
    pytest.importorskip("transformers")  # open_clip's HFTokenizer is built on it
    return open_clip.tokenizer.HFTokenizer(str(folder), context_length=length, clean="canonicalize")(texts)


def test_local_folder_named_by_the_config_gives_open_clips_ids(gemma_repo, texts):
    config = get_model_config("ViT-B-16-SigLIP2")
    local = config.replace(text=dataclasses.replace(config.text, hf_tokenizer_name=str(gemma_repo)))
    tokenizer = clipforge.get_tokenizer(local)
    assert isinstance(tokenizer, HFTokenizer) and tokenizer.clean == "canonicalize"
    got = tokenizer(texts)
    assert got.shape == (len(texts), 64)
    want = _open_clip_ids(gemma_repo, texts)
    mismatch = [t for t, a, b in zip(texts, got.tolist(), want.tolist(), strict=True) if a != b]
    assert not mismatch, f"{len(mismatch)} texts differ, first: {mismatch[:3]}"
    assert torch.equal(clipforge.get_tokenizer(local, context_length=16)(texts), _open_clip_ids(gemma_repo, texts, 16))


def test_hub_download_then_offline_cache_then_clear_errors(gemma_repo, texts, tmp_path):
    (tmp_path / "texts.json").write_text(json.dumps(texts), encoding="utf-8")
    args = (str(tmp_path / "texts.json"), str(tmp_path / "ids.pt"))
    want = _open_clip_ids(gemma_repo, texts)
    cache = str(tmp_path / "cache")
    with FakeHub({REPO: gemma_repo}) as url:
        result = _run({"HF_ENDPOINT": url, "HF_HUB_CACHE": cache}, *args)
        assert result.returncode == 0, result.stdout + result.stderr[-3000:]
        assert result.stdout.startswith("HFTokenizer")
        assert torch.equal(torch.load(args[1], weights_only=True), want)
        assert "models--timm--ViT-B-16-SigLIP2" in result.stdout  # the cache's snapshot folder
    # Offline: the cache serves, no server needed.
    os.remove(args[1])
    result = _run({"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": cache, "HF_ENDPOINT": "http://127.0.0.1:9"}, *args)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert torch.equal(torch.load(args[1], weights_only=True), want)
    # Offline with an empty cache: the error names the repository, the files and what to do.
    empty = str(tmp_path / "empty-cache")
    result = _run({"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": empty}, *args)
    assert result.returncode == 3, result.stdout + result.stderr[-3000:]
    assert "HubDownloadError" in result.stdout and REPO in result.stdout and "tokenizer.json" in result.stdout
    assert "unset HF_HUB_OFFLINE" in result.stdout
    # The hub unreachable (nothing listens): at once, from the cache only, saying so.
    result = _run({"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_CACHE": empty}, *args)
    assert result.returncode == 3, result.stdout + result.stderr[-3000:]
    assert REPO in result.stdout and "unreachable" in result.stdout and "HF_HUB_OFFLINE=1" in result.stdout


def test_repository_without_a_tokenizer_is_named(tmp_path):
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "README.md").write_text("no tokenizer here")
    (tmp_path / "texts.json").write_text('["a cat"]')
    with FakeHub({REPO: tmp_path / "repo"}) as url:
        env = {"HF_ENDPOINT": url, "HF_HUB_CACHE": str(tmp_path / "cache")}
        result = _run(env, str(tmp_path / "texts.json"), str(tmp_path / "ids.pt"))
    assert result.returncode == 3, result.stdout + result.stderr[-3000:]
    assert REPO in result.stdout and "spiece.model" in result.stdout and "not in the repository" in result.stdout
