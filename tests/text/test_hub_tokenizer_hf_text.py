"""Tokenizers of the Hugging Face text-tower named models (nllb-clip-*, xlm-roberta-*, roberta-*, mt5-*, the
MetaCLIP 2 ViT-*-worldwide) fetched through weights/hub.py rather than transformers' AutoTokenizer: downloaded from a
loopback hub (tests/support/hubserver.py, HF_ENDPOINT) into huggingface_hub's cache, served from it with
HF_HUB_OFFLINE=1, and a `HubDownloadError` naming the repository and what to do when they cannot be had (never
transformers' raw OSError).

The ids must equal open_clip's `HFTokenizer` on the same files (what the AutoTokenizer path gave before). Each
download runs in a subprocess so that HF_ENDPOINT / HF_HUB_OFFLINE / HF_HUB_CACHE are set before huggingface_hub is
imported.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from clipforge.text.hf_tokenizer import HFTokenizer
from support.hf_text import CORPUS, make_hf_text_folder
from support.hubserver import FakeHub

LANGS = ["eng_Latn", "fra_Latn", "zho_Hans"]
TEXTS = sorted(set(CORPUS)) + ["  Mixed   spacing &amp; HTML &lt;tags&gt; ", "", "a very long caption " * 30]
TOKENIZE = """
import json, sys, torch, clipforge
name, language = sys.argv[1], (sys.argv[4] or None)
texts = json.load(open(sys.argv[2], encoding="utf-8"))
try:
    tokenizer = clipforge.get_tokenizer(name, language=language)
except Exception as exc:
    print("ERROR:", type(exc).__name__, exc)
    raise SystemExit(3)
torch.save(tokenizer(texts), sys.argv[3])
print(type(tokenizer).__name__, tokenizer.source)
"""


def _nllb_folder(folder):
    """NLLB's hub layout: tokenizer.json (BPE, <s>=0 <pad>=1 </s>=2 <unk>=3, language codes as special tokens)
    plus tokenizer_config.json naming NllbTokenizer (its framing) and special_tokens_map.json."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers, processors, trainers

    folder.mkdir(parents=True)
    tok = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "<pad>", "</s>", "<unk>"])
    tok.train_from_iterator(CORPUS, trainer=trainer)
    tok.add_special_tokens([AddedToken(code, special=True, normalized=False) for code in LANGS])
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 2)])
    tok.save(str(folder / "tokenizer.json"))
    config = {
        "tokenizer_class": "NllbTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "src_lang": None, "tgt_lang": None, "additional_special_tokens": LANGS, "legacy_behaviour": False,
    }  # fmt: skip
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    (folder / "special_tokens_map.json").write_text(json.dumps({"pad_token": "<pad>", "eos_token": "</s>"}))
    (folder / "sentencepiece.bpe.model").write_bytes(b"not needed beside tokenizer.json")
    return folder


def _mt5_folder(folder):
    """mT5's hub layout: no tokenizer.json, only SentencePiece's spiece.model (<pad>=0 </s>=1 <unk>=2) with
    tokenizer_config.json and config.json, which transformers' AutoTokenizer reads (and converts) locally."""
    import io

    sentencepiece = pytest.importorskip("sentencepiece")  # optional: the minimum-versions venv has neither
    pytest.importorskip("transformers")  # a folder without tokenizer.json is read by AutoTokenizer

    folder.mkdir(parents=True)
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS), model_writer=model, vocab_size=150, model_type="unigram", pad_id=0, eos_id=1,
        unk_id=2, bos_id=-1, character_coverage=1.0, minloglevel=2,
    )  # fmt: skip
    (folder / "spiece.model").write_bytes(model.getvalue())
    config = {"tokenizer_class": "T5Tokenizer", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>",
              "extra_ids": 0, "additional_special_tokens": []}  # fmt: skip
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    (folder / "config.json").write_text(json.dumps({"model_type": "mt5"}))
    return folder


# (named model, its hub repository, folder builder, language, the files its snapshot must hold): an NLLB-style and
# an XLM-R-style tokenizer (tokenizer.json: no slow vocabulary fetched), and mT5's SentencePiece-only repository.
CASES = {
    "nllb": ("nllb-clip-base", "facebook/nllb-200-distilled-600M", _nllb_folder, "fra_Latn",
             {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"}),
    "xlmr": ("ViT-H-14-worldwide", "facebook/xlm-v-base", lambda f: make_hf_text_folder(f.parent)[0], "",
             {"tokenizer.json", "tokenizer_config.json"}),
    "mt5": ("mt5-base-ViT-B-32", "google/mt5-base", _mt5_folder, "", {"spiece.model", "tokenizer_config.json",
            "config.json"}),
}  # fmt: skip


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(TOKENIZE), *args],
        env={**os.environ, "HF_HUB_DISABLE_TELEMETRY": "1", **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def _want(folder, language: str, length: int) -> torch.Tensor:
    """The ids of the repository's files read locally (the path test_nllb_mt5 holds to transformers' NLLB
    framing); with no language they are also open_clip's HFTokenizer's (what the AutoTokenizer path gave)."""
    want = HFTokenizer(folder, length, language=language or None)(TEXTS)
    if not language:
        open_clip = pytest.importorskip("open_clip")
        pytest.importorskip("transformers")
        assert torch.equal(want, open_clip.tokenizer.HFTokenizer(str(folder), context_length=length)(TEXTS))
    return want


@pytest.mark.parametrize("kind", sorted(CASES))
def test_named_model_tokenizer_from_hub_then_cache_then_clear_errors(kind, tmp_path):
    name, repo, build, language, files = CASES[kind]
    folder = build(tmp_path / "hub" / repo.split("/")[1])
    texts_file = tmp_path / "texts.json"
    texts_file.write_text(json.dumps(TEXTS), encoding="utf-8")
    out = str(tmp_path / "ids.pt")
    args = (name, str(texts_file), out, language)
    length = 77
    want = _want(folder, language, length)
    cache = str(tmp_path / "cache")
    with FakeHub({repo: folder}) as url:
        result = _run({"HF_ENDPOINT": url, "HF_HUB_CACHE": cache}, *args)
        assert result.returncode == 0, result.stdout + result.stderr[-3000:]
        assert result.stdout.startswith("HFTokenizer")
        assert "models--" + repo.replace("/", "--") in result.stdout  # read from the cache's snapshot folder
        got = torch.load(out, weights_only=True)
        assert got.shape == (len(TEXTS), length) and torch.equal(got, want)
    if kind == "nllb":  # the framing: the chosen language code first
        assert got[:, 0].tolist() == [HFTokenizer(folder)._fast_vocab.token_to_id(language)] * len(TEXTS)
    snapshot = [p for p in (tmp_path / "cache").rglob("*") if p.is_file() or p.is_symlink()]
    names = {p.name for p in snapshot if "snapshots" in p.parts}
    assert names == files  # tokenizer.json suffices when there is one: no slow vocabulary downloaded
    # Offline: the cache serves, no server needed, same ids.
    os.remove(out)
    result = _run({"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": cache, "HF_ENDPOINT": "http://127.0.0.1:9"}, *args)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert torch.equal(torch.load(out, weights_only=True), want)
    if kind == "mt5":  # the error paths are the same for every repository (the other cases check them)
        return
    # Offline with an empty cache: a HubDownloadError naming the repository, the files and what to do.
    empty = str(tmp_path / "empty-cache")
    result = _run({"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": empty}, *args)
    assert result.returncode == 3, result.stdout + result.stderr[-3000:]
    assert "HubDownloadError" in result.stdout and repo in result.stdout and "tokenizer.json" in result.stdout
    assert "unset HF_HUB_OFFLINE" in result.stdout
    # The hub unreachable (nothing listens): from the cache only, saying so.
    result = _run({"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_CACHE": empty}, *args)
    assert result.returncode == 3, result.stdout + result.stderr[-3000:]
    assert repo in result.stdout and "unreachable" in result.stdout and "HF_HUB_OFFLINE=1" in result.stdout


def test_legacy_hub_name_offline_is_a_hub_error_not_transformers_oserror(tmp_path):
    """xlm-roberta-base-ViT-B-32 names its tokenizer "xlm-roberta-base" (no org): the same clear error."""
    (tmp_path / "texts.json").write_text('["a cat"]')
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "empty")}
    result = _run(env, "xlm-roberta-base-ViT-B-32", str(tmp_path / "texts.json"), str(tmp_path / "ids.pt"), "")
    assert result.returncode == 3, result.stdout + result.stderr[-3000:]
    assert "HubDownloadError" in result.stdout and "'xlm-roberta-base'" in result.stdout
