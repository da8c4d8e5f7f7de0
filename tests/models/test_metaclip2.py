"""MetaCLIP 2 "worldwide" models: CLIP towers with an XLM-V vocabulary (901,629 ids) and an HF tokenizer.

The named configs are open_clip's JSON translated; the full-size layouts are checked on the meta device by
tests/models/test_architectures.py (the vocabulary alone is ~900k x width). Here a small registered config
(tiny-metaclip2) with random weights, saved as an open_clip folder beside a tiny multilingual tokenizer.json
(tests/support/hf_text.py), is loaded by both libraries: same token ids on a multilingual corpus, features
within 1e-4 (max abs diff, L2-normalised, fp32).
"""

import dataclasses
import shutil

import pytest
import torch

import clipforge
from clipforge.models import CLIP, ConfigError, get_model_config, list_models
from clipforge.text.hf_tokenizer import HFTokenizer
from clipforge.weights.loading import save_model
from clipforge.weights.openclip import config_from_openclip, config_to_openclip
from support.hf_text import CORPUS, make_hf_text_folder

open_clip = pytest.importorskip("open_clip")

TOL = 1e-4
WORLDWIDE = ["ViT-H-14-worldwide", "ViT-H-14-worldwide-378", "ViT-bigG-14-worldwide", "ViT-bigG-14-worldwide-378"]
TEXTS = sorted(set(CORPUS)) + [
    "  Mixed   spacing &amp; HTML &lt;tags&gt; in   text ",
    "Ｆｕｌｌｗｉｄｔｈ ＴＥＸＴ and Ümlauts",
    "",
    "a very long caption " * 40,  # truncated to the context length with its end token kept
]


@pytest.mark.parametrize("name", [*WORLDWIDE, "ViT-H-14-worldwide-quickgelu", "ViT-H-14-378-quickgelu"])
def test_named_config_is_open_clips(name):
    theirs, ours = config_from_openclip(open_clip.get_model_config(name)), get_model_config(name)
    if ours.text.pool_type == "argmax":  # argmax pooling never reads eos_id (the file keeps CLIP's default)
        theirs = theirs.replace(text=dataclasses.replace(theirs.text, eos_id=ours.text.eos_id))
    assert theirs == ours
    if "worldwide" in name:
        assert (ours.text.vocab_size, ours.text.pool_type, ours.text.eos_id) == (901629, "eos", 2)
        assert ours.text.hf_tokenizer_name == "facebook/xlm-v-base"


def test_quickgelu_names_are_exactly_open_clips():
    names = set(list_models())
    assert {"ViT-H-14-worldwide-quickgelu", "ViT-H-14-378-quickgelu"} <= names
    assert get_model_config("ViT-H-14-worldwide-quickgelu").text.act == "quick_gelu"
    with pytest.raises(ConfigError, match="no QuickGELU variant"):  # open_clip ships none for bigG worldwide
        get_model_config("ViT-bigG-14-worldwide-quickgelu")


def test_pretrained_tags():
    entry = clipforge.weights.pretrained.find_pretrained("ViT-H-14-worldwide", "metaclip2_worldwide")
    assert entry.arch == "ViT-H-14-worldwide-quickgelu"  # the 224 px H/14 was trained with QuickGELU
    entry = clipforge.weights.pretrained.find_pretrained("ViT-bigG-14-worldwide-378", "metaclip2_worldwide")
    assert (entry.arch, entry.resize_mode) == ("ViT-bigG-14-worldwide-378", "squash")


def test_openclip_config_round_trip_keeps_the_tokenizer():
    config = get_model_config("ViT-H-14-worldwide")
    cfg = config_to_openclip(config)
    assert cfg["model_cfg"]["text_cfg"]["hf_tokenizer_name"] == "facebook/xlm-v-base"
    assert config_from_openclip(cfg["model_cfg"], cfg["preprocess_cfg"]) == config


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """An open_clip hub-style folder: tiny-metaclip2 with random weights + a tiny XLM-R-style tokenizer."""
    root = tmp_path_factory.mktemp("metaclip2")
    tok_folder, _ = make_hf_text_folder(root / "tok")
    torch.manual_seed(0)
    model = CLIP(get_model_config("tiny-metaclip2")).eval()
    with torch.no_grad():  # random everything (zero-init biases and unit LayerNorms would hide mismatches)
        for p in model.parameters():
            p.copy_(0.05 * torch.randn_like(p))
    folder = save_model(model, root / "model", format="openclip")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tok_folder / name, folder / name)
    return folder, tok_folder


def test_tokenizer_ids_equal_open_clips(tiny_folder):
    folder, tok_folder = tiny_folder
    ours = clipforge.get_tokenizer(f"local-dir:{folder}")
    assert isinstance(ours, HFTokenizer) and ours.source == str(folder)
    pytest.importorskip("transformers")  # open_clip's HFTokenizer is built on it (clipforge's reads tokenizer.json)
    theirs = open_clip.get_tokenizer(f"local-dir:{folder}")
    assert isinstance(theirs, open_clip.tokenizer.HFTokenizer)
    got, want = ours(TEXTS), theirs(TEXTS)
    assert got.shape == (len(TEXTS), 77)
    assert torch.equal(got, want)
    assert int(got[-1, -1]) == 2  # the truncated row still ends with </s>, the pooled eos_id
    # A config naming the tokenizer folder (no local-dir) gives the same ids, at any context length.
    config = get_model_config("tiny-metaclip2")
    config = config.replace(text=dataclasses.replace(config.text, hf_tokenizer_name=str(tok_folder)))
    assert torch.equal(clipforge.get_tokenizer(config)(TEXTS), want)
    assert torch.equal(clipforge.get_tokenizer(config, context_length=16)(TEXTS), theirs(TEXTS, context_length=16))


def test_small_model_features_match_open_clip(tiny_folder):
    folder, _ = tiny_folder
    theirs = open_clip.create_model(f"local-dir:{folder}", pretrained=None, load_weights=True).eval()
    ours = clipforge.load_model(folder).eval()
    tokens = clipforge.get_tokenizer(f"local-dir:{folder}")(TEXTS)  # (N, 77), ids < 300
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref_t = torch.nn.functional.normalize(theirs.encode_text(tokens), dim=-1)
        ref_i = torch.nn.functional.normalize(theirs.encode_image(images), dim=-1)
        got_t, got_i = ours.encode_text(tokens, normalize=True), ours.encode_image(images, normalize=True)
    diff = max((got_t - ref_t).abs().max().item(), (got_i - ref_i).abs().max().item())
    assert diff <= TOL, f"max abs diff {diff:.2e}"
    # pooling reads the first eos_id (2): moving it changes the text features
    moved = tokens.clone()
    moved[0, 1] = 2
    with torch.no_grad():
        assert (ours.encode_text(moved[:1], normalize=True) - got_t[:1]).abs().max() > 1e-3
