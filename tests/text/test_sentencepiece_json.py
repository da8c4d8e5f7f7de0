"""SigLIP 2's tokenizer from a `tokenizer.json` (text/sentencepiece.py TokenizerJsonTokenizer) against transformers.

A tiny Gemma-shaped tokenizer is built here (BPE with byte fallback, `<pad>` 0 / `<eos>` 1 / `<bos>` 2 / `<unk>` 3,
spaces normalised to "▁", a post-processor prepending `<bos>` as Gemma's does) on a multilingual corpus (CJK,
Arabic, Devanagari, Cyrillic, Greek, emoji) and saved as tokenizer.json; clipforge's ids are compared with
transformers' Siglip2Tokenizer (lowercasing) and PreTrainedTokenizerFast reading the same file.
"""

import json

import pytest
import torch

from clipforge.text.hf_tokenizer import HFTokenizer
from clipforge.text.sentencepiece import TokenizerJsonTokenizer, load_siglip_tokenizer

tokenizers = pytest.importorskip("tokenizers")

CORPUS = [
    "A photo of a cat sitting on the mat.",
    "Two dogs playing in the snow at night!",
    "Un chat noir dort sur le canapé, n'est-ce pas?",
    "Ein Hund läuft über die Straße.",
    "一只猫坐在垫子上。",
    "東京の夜景はとても美しいです。",
    "고양이가 매트 위에 앉아 있다.",
    "قطة تجلس على السجادة في الغرفة",
    "एक बिल्ली चटाई पर बैठी है।",
    "Кошка сидит на коврике.",
    "🐱 cat emoji 🐶 dog emoji 🎉 party time",
    "Ελληνικά κείμενα για δοκιμή.",
]
# Upper case (lowercased first), unseen scripts (byte fallback), whitespace runs, long rows (truncation).
EXTRA = ["", "  lots   of\tspace  ", "UPPER_case_With_Underscores", "x" * 100, "ÅNGSTRÖM ΣΊΣΥΦΟΣ", "ქართული ენა 🦄"]
SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
LENGTH = 16


@pytest.fixture(scope="module")
def json_dir(tmp_path_factory):
    from tokenizers import Tokenizer, decoders, models, normalizers, processors, trainers

    folder = tmp_path_factory.mktemp("gemma_json")
    tok = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    byte_tokens = [f"<0x{i:02X}>" for i in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=SPECIALS + byte_tokens, show_progress=False)
    tok.train_from_iterator([t.lower() for t in CORPUS] * 20, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    tok.save(str(folder / "tokenizer.json"))
    return folder


def _ref_rows(ids_lists, eos, pad):
    rows = []
    for ids in ids_lists:
        ids = list(ids)[: LENGTH - 1] + [eos]
        rows.append(ids + [pad] * (LENGTH - len(ids)))
    return rows


def test_ids_match_transformers(json_dir):
    transformers = pytest.importorskip("transformers")
    ours = TokenizerJsonTokenizer(json_dir, context_length=LENGTH)
    assert (ours.pad_token_id, ours.eos_token_id) == (0, 1)
    texts = CORPUS + EXTRA
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(json_dir / "tokenizer.json"))
    lower = tokenizers.normalizers.Lowercase().normalize_str  # Python's str.lower differs on a final "Σ"
    pieces = fast([lower(t) for t in texts], add_special_tokens=False).input_ids
    assert ours(texts).tolist() == _ref_rows(pieces, 1, 0)
    assert any(3 < i < 5 + 256 for row in pieces for i in row), "the corpus should exercise byte fallback"
    # transformers' SigLIP 2 tokenizer lowercases itself: raw text gives the same pieces.
    siglip2 = transformers.Siglip2Tokenizer(tokenizer_file=str(json_dir / "tokenizer.json"))
    raw = siglip2(texts, add_special_tokens=False).input_ids
    assert raw == pieces


def test_framing_and_decode(json_dir):
    ours = TokenizerJsonTokenizer(json_dir, context_length=LENGTH)
    ids = ours(["A Photo of a CAT", "x" * 100])  # (2, 16)
    assert ids.dtype == torch.int64 and ids.shape == (2, LENGTH)
    assert 2 not in ids.tolist()[0], "no start token"
    first = ids[0].tolist()
    end = first.index(1)
    assert all(i == 0 for i in first[end + 1 :]) and end < LENGTH - 1  # right-padded with <pad>
    assert ids[1, -1].item() == 1  # truncation keeps the end token last
    assert ours.decode(ids[0]) == "a photo of a cat"
    assert ours.encode("A Photo") == ours(["a photo"], context_length=64)[0].tolist()[: len(ours.encode("a photo"))]
    assert ours(["x"], context_length=4).shape == (1, 4)


def test_config_renames_tokens_and_loader_picks_json(json_dir, tmp_path):
    (tmp_path / "tokenizer.json").write_bytes((json_dir / "tokenizer.json").read_bytes())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"pad_token": {"content": "<eos>"}}))
    tok = load_siglip_tokenizer(tmp_path, context_length=8)  # text/hf_tokenizer.py gemma_tokenizer: the file's framing
    assert isinstance(tok, HFTokenizer) and tok.pad_token_id == 1
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>"}))
    with pytest.raises(ValueError, match="eos_token '</s>' is not in this tokenizer's vocabulary"):
        TokenizerJsonTokenizer(tmp_path)


def test_bad_sources_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither spiece.model .* nor tokenizer.json"):
        load_siglip_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match="tokenizer.json: not a readable Hugging Face tokenizers file"):
        TokenizerJsonTokenizer(tmp_path)
