"""A model read from a folder with its own tokenizer carries that tokenizer into every folder it is written to.

For a tiny SigLIP (SiglipModel folder + spiece.model), SigLIP 2 (Siglip2Model folder + Gemma tokenizer.json), an
XLM-R HF-text CLIP (open_clip layout + tokenizer.json) and a Chinese-CLIP (ChineseCLIPModel + vocab.txt): read ->
save in each format that holds the model -> MOVE the output folder and delete the source -> load ->
get_tokenizer gives the original tokenizer's ids on a multilingual corpus, and no written config names an
absolute path (the reference is "." = this folder: weights/native.py THIS_FOLDER).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
spm = pytest.importorskip("sentencepiece")

import clipforge  # noqa: E402
from clipforge.models.clip import CLIP  # noqa: E402
from clipforge.models.config import CLIPConfig, TextConfig, VisionConfig  # noqa: E402
from clipforge.weights import hf_siglip, native  # noqa: E402
from clipforge.weights.families import writable_refusal  # noqa: E402
from clipforge.weights.hf_siglip import is_siglip  # noqa: E402
from support.gemma_tokenizer import CORPUS, EXTRA, make_gemma_folder  # noqa: E402
from support.hf_text import make_hf_text_folder  # noqa: E402

TEXTS = CORPUS + EXTRA + ["一只猫坐在红色的桌子上", "A photo of cats, the RED table.", "小狗的照片 dog"]


def _siglip(root: Path) -> Path:
    folder = root / "siglip"
    hf_siglip.write_hf_siglip_dir(clipforge.create_model("tiny-siglip-map"), folder)
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(CORPUS * 20) + "\n", encoding="utf-8")
    spm.SentencePieceTrainer.train(  # SigLIP's special ids: <pad> 0, </s> 1, <unk> 2, no start token
        input=str(corpus), model_prefix=str(folder / "spiece"), vocab_size=150, hard_vocab_limit=False,
        model_type="unigram", character_coverage=1.0, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
        num_threads=1, minloglevel=2,
    )
    (folder / "spiece.vocab").unlink()
    return folder


def _siglip2(root: Path) -> Path:
    folder = root / "siglip2"
    clipforge.save_model(clipforge.create_model("tiny-siglip2"), folder, format="hf")
    make_gemma_folder(folder)
    return folder


def _xlmr(root: Path) -> Path:
    """An open_clip-layout HF-text CLIP (hub encoder name, no config.json fetch: the fields are stored) plus the
    tokenizer files open_clip's hub folders carry beside the weights."""
    tok_folder, fields = make_hf_text_folder(root / "xlmr_tok")
    text = TextConfig(context_length=20, hf_config=fields, hf_model_name="xlm-roberta-base")
    vision = VisionConfig(image_size=32, layers=1, width=32, patch_size=16, heads=2)
    torch.manual_seed(0)
    folder = root / "xlmr"
    clipforge.save_model(CLIP(CLIPConfig(embed_dim=16, vision=vision, text=text)), folder, format="openclip")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tok_folder / name, folder / name)
    shutil.rmtree(root / "xlmr_tok")
    return folder


def _chinese_clip(root: Path) -> Path:
    folder = root / "chinese_clip"
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "photo", "of", "cat", "dog", "the", "red", "table"]
    vocab += ["##s", ",", "."] + list("一只猫坐在红色的桌子上小狗照片")
    text_config = dict(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=40,
    )
    vision_config = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, image_size=32, patch_size=16
    )
    config = transformers.ChineseCLIPConfig(text_config=text_config, vision_config=vision_config, projection_dim=16)
    torch.manual_seed(0)
    transformers.ChineseCLIPModel(config).save_pretrained(folder)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "BertTokenizer", "do_lower_case": True, "model_max_length": 12})
    )
    return folder


def _metaclip2(root: Path) -> Path:
    """MetaCLIP 2 (CLIP's text tower, an HF vocabulary): a clipforge folder written from a model whose tokenizer
    was a local folder, which is then deleted; the folder holds the copy and names it "."."""
    tok_folder, _ = make_hf_text_folder(root / "xlmv_tok")
    model = clipforge.create_model("tiny-metaclip2")
    cfg = model.config.replace(text=dataclasses.replace(model.config.text, hf_tokenizer_name=str(tok_folder)))
    folder = native.write_native(cfg, model.state_dict(), root / "metaclip2")
    shutil.rmtree(tok_folder)
    return folder


SOURCES = {
    "siglip": _siglip, "siglip2": _siglip2, "xlmr": _xlmr, "chinese_clip": _chinese_clip, "metaclip2": _metaclip2,
}
# The formats each family is written to here (what families.writable_refusal / the hf writers accept: open_clip
# holds SigLIP towers only as named timm models, too big here; MetaCLIP 2 covers its non-HF tokenizer reference).
FORMATS = {
    "siglip": ("clipforge", "hf"),
    "siglip2": ("clipforge", "hf"),
    "metaclip2": ("clipforge", "openclip"),
    "xlmr": ("clipforge", "openclip"),
    "chinese_clip": ("clipforge", "hf"),
}
CASES = [(family, fmt) for family, formats in FORMATS.items() for fmt in formats]


def _absolute_strings(value, found: list[str]) -> list[str]:
    if isinstance(value, dict):
        for item in value.values():
            _absolute_strings(item, found)
    elif isinstance(value, list):
        for item in value:
            _absolute_strings(item, found)
    elif isinstance(value, str) and (Path(value).is_absolute() or ":\\" in value):
        found.append(value)
    return found


@pytest.mark.parametrize(("family", "fmt"), CASES)
def test_written_folder_carries_its_tokenizer(tmp_path, family, fmt):
    source = SOURCES[family](tmp_path / "src")
    model = clipforge.load_model(str(source))
    assert model.config.text.hf_tokenizer_name == str(source.resolve())  # the reader recorded the folder's own
    assert writable_refusal(model.config, fmt) is None
    expected = clipforge.get_tokenizer(model)(TEXTS)
    # SigLIP folders: get_tokenizer("local-dir:") reads the folder's files itself (text/sentencepiece.py)
    expected_local = clipforge.get_tokenizer(f"local-dir:{source}")(TEXTS)
    out = clipforge.save_model(model, tmp_path / "out", format=fmt)
    moved = tmp_path / "elsewhere" / "moved"
    moved.parent.mkdir()
    shutil.move(str(out), str(moved))
    shutil.rmtree(tmp_path / "src")

    for config_file in moved.glob("*.json"):
        text = config_file.read_text(encoding="utf-8")
        assert str(tmp_path) not in text, f"{config_file.name} names the source folder"
        assert _absolute_strings(json.loads(text), []) == [], config_file.name
    if fmt == "clipforge":
        written = json.loads((moved / native.CONFIG_NAME).read_text())["model"]["text"]
        assert written["hf_tokenizer_name"] == native.THIS_FOLDER

    reloaded = clipforge.load_model(str(moved))
    assert reloaded.config.text.hf_tokenizer_name == str(moved.resolve())
    assert torch.equal(clipforge.get_tokenizer(reloaded)(TEXTS), expected)
    assert torch.equal(clipforge.get_tokenizer(f"local-dir:{moved}")(TEXTS), expected_local)
    if fmt == "openclip":  # open_clip reads a local-dir: folder's own tokenizer files (its get_tokenizer)
        open_clip = pytest.importorskip("open_clip")
        assert torch.equal(open_clip.get_tokenizer(f"local-dir:{moved}")(TEXTS), expected)


def test_convert_carries_the_tokenizer(tmp_path):
    """clipforge.convert (what `clipforge convert` runs) from a Chinese-CLIP folder, then the source deleted."""
    source = _chinese_clip(tmp_path / "src")
    expected = clipforge.get_tokenizer(clipforge.load_model(str(source)))(TEXTS)
    out = clipforge.convert(str(source), tmp_path / "out")
    shutil.rmtree(tmp_path / "src")
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".txt") == ["vocab.txt"]
    assert torch.equal(clipforge.get_tokenizer(clipforge.load_model(str(out)))(TEXTS), expected)


@pytest.mark.parametrize("family", ["siglip2", "xlmr", "chinese_clip"])
def test_a_folder_read_by_a_relative_path_records_an_absolute_one(tmp_path, monkeypatch, family):
    """load_model(".") inside the folder: the recorded tokenizer folder is absolute, so the copy still happens."""
    source = SOURCES[family](tmp_path / "src")
    monkeypatch.chdir(source)
    model = clipforge.load_model(".")
    assert model.config.text.hf_tokenizer_name == str(source.resolve())
    expected = clipforge.get_tokenizer(model)(TEXTS)
    out = clipforge.save_model(model, tmp_path / "out")
    monkeypatch.chdir(tmp_path)
    shutil.rmtree(source)
    assert torch.equal(clipforge.get_tokenizer(clipforge.load_model(str(out)))(TEXTS), expected)


def test_hub_ids_stay_and_nothing_is_copied(tmp_path):
    """A hub tokenizer reference ("facebook/xlm-v-base") is written unchanged and no files appear."""
    model = clipforge.create_model("tiny-metaclip2")
    assert model.config.text.hf_tokenizer_name and "/" in model.config.text.hf_tokenizer_name
    out = clipforge.save_model(model, tmp_path / "out")
    written = json.loads((out / native.CONFIG_NAME).read_text())["model"]["text"]
    assert written["hf_tokenizer_name"] == model.config.text.hf_tokenizer_name
    assert sorted(p.name for p in out.iterdir()) == sorted([native.CONFIG_NAME, native.WEIGHTS_NAME])


def test_resaving_in_place_keeps_the_relative_reference(tmp_path):
    source = _siglip(tmp_path)
    out = clipforge.save_model(clipforge.load_model(str(source)), tmp_path / "out")
    again = clipforge.save_model(clipforge.load_model(str(out)), out)  # the tokenizer is already there
    assert json.loads((again / native.CONFIG_NAME).read_text())["model"]["text"]["hf_tokenizer_name"] == "."
    assert (again / "spiece.model").read_bytes() == (source / "spiece.model").read_bytes()


def test_unresolved_relative_reference_is_refused_not_read_from_the_working_directory():
    """A config holding "." that no reader resolved (built by hand) must not tokenize with the cwd's files."""
    cfg = clipforge.create_model("tiny-siglip-map").config
    cfg = cfg.replace(text=dataclasses.replace(cfg.text, hf_tokenizer_name="."))
    assert is_siglip(cfg)
    with pytest.raises(ValueError, match=r"hf_tokenizer_name.*'\.'.*folder"):
        clipforge.get_tokenizer(cfg)


HUB_CODE = """
import json, sys, torch, clipforge
texts, repos = json.loads(sys.argv[1]), json.loads(sys.argv[2])
got = {}
for repo in repos:  # get_tokenizer of the loaded model, and of the hub name alone (its config only)
    model = clipforge.load_model(f"hf-hub:{repo}")
    got[repo] = clipforge.get_tokenizer(model)(texts), clipforge.get_tokenizer(f"hf-hub:{repo}")(texts)
torch.save({repo: torch.stack(pair) for repo, pair in got.items()}, sys.argv[3])
"""


def test_pushed_folder_tokenizes_from_the_hub(tmp_path):
    """A folder written with "." and served as a hub repository: the tokenizer comes from that repository."""
    import os
    import subprocess
    import sys

    from support.hubserver import FakeHub

    repos, expected = {}, {}
    for family, fmt in (("siglip", "clipforge"), ("metaclip2", "clipforge"), ("metaclip2", "openclip")):
        model = clipforge.load_model(str(SOURCES[family](tmp_path / f"src_{family}_{fmt}")))
        expected[f"org/{family}-{fmt}"] = clipforge.get_tokenizer(model)(TEXTS)
        repos[f"org/{family}-{fmt}"] = clipforge.save_model(model, tmp_path / "repos" / f"{family}-{fmt}", format=fmt)
    out = tmp_path / "ids.pt"
    with FakeHub(repos) as url:
        env = {**os.environ, "HF_ENDPOINT": url, "HF_HUB_CACHE": str(tmp_path / "cache")}
        args = [sys.executable, "-c", HUB_CODE, json.dumps(TEXTS), json.dumps(list(repos)), str(out)]
        result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    got = torch.load(out, weights_only=True)
    for repo, ids in expected.items():
        assert torch.equal(got[repo][0], ids), f"{repo}: get_tokenizer(model)"
        assert torch.equal(got[repo][1], ids), f"{repo}: get_tokenizer('hf-hub:{repo}')"
