"""SigLIP's SentencePiece tokenizer (text/sentencepiece.py) against transformers' SiglipTokenizer and open_clip's
canonicalising HFTokenizer, on a tiny SentencePiece model trained here on a multilingual corpus (CJK, Arabic,
Devanagari, Cyrillic, Greek, emoji)."""

import dataclasses

import pytest
import torch

from clipforge.text.sentencepiece import SentencePieceTokenizer, canonicalize_text

spm = pytest.importorskip("sentencepiece")

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
EXTRA = ["", "  lots   of\tspace  ", "UPPER_case_with_underscores", "x" * 100, "a ▁ b", "<unk> token", "</s> end"]


@pytest.fixture(scope="module")
def spiece_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("siglip_spm")
    corpus = folder / "corpus.txt"
    corpus.write_text("\n".join(CORPUS * 20) + "\n", encoding="utf-8")
    spm.SentencePieceTrainer.train(  # SigLIP's special ids: <pad> 0, </s> 1, <unk> 2, no start token
        input=str(corpus), model_prefix=str(folder / "spiece"), vocab_size=150, hard_vocab_limit=False,
        model_type="unigram", character_coverage=1.0, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
        num_threads=1, minloglevel=2,
    )
    (folder / "corpus.txt").unlink()
    (folder / "spiece.vocab").unlink()
    return folder


def test_matches_transformers_siglip_tokenizer(spiece_dir):
    transformers = pytest.importorskip("transformers")
    ref = transformers.SiglipTokenizer(str(spiece_dir / "spiece.model"))
    ours = SentencePieceTokenizer(spiece_dir, context_length=16)
    assert (ours.pad_token_id, ours.eos_token_id) == (ref.pad_token_id, ref.eos_token_id) == (1, 1)
    texts = CORPUS + EXTRA
    expected = ref([canonicalize_text(t) for t in texts], max_length=16, padding="max_length", truncation=True)
    assert ours(texts).tolist() == expected.input_ids
    # Without underscores (and special-token strings, which transformers matches before cleaning) SiglipTokenizer's
    # own cleaning is open_clip's: raw text gives the same ids.
    plain = [t for t in texts if "_" not in t and "<" not in t]
    assert ours(plain).tolist() == ref(plain, max_length=16, padding="max_length", truncation=True).input_ids


def test_matches_open_clip_canonicalising_hftokenizer(spiece_dir, tmp_path):
    open_clip = pytest.importorskip("open_clip")
    transformers = pytest.importorskip("transformers")
    transformers.SiglipTokenizer(str(spiece_dir / "spiece.model")).save_pretrained(tmp_path)
    ref = open_clip.tokenizer.HFTokenizer(str(tmp_path), context_length=64, clean="canonicalize")
    ours = SentencePieceTokenizer(tmp_path)  # the folder as saved: spiece.model + tokenizer_config.json
    texts = CORPUS + EXTRA
    assert torch.equal(ours(texts), ref(texts))


def test_rows_padding_truncation_and_decode(spiece_dir):
    tok = SentencePieceTokenizer(spiece_dir, context_length=8)
    ids = tok(["a cat", "x" * 100])
    assert ids.shape == (2, 8) and ids.dtype == torch.long
    assert ids[1, -1].item() == tok.eos_token_id  # truncation keeps the end token last
    assert tok.decode(ids[0]) == "a cat"
    assert tok("A CAT!!").tolist() == tok("a cat").tolist()  # canonicalised: case and punctuation
    assert tok([]).shape == (0, 8)
    assert tok("cat", context_length=4).shape == (1, 4)


def test_bad_sources_are_refused_clearly(tmp_path, spiece_dir):
    with pytest.raises(FileNotFoundError, match="spiece.model"):
        SentencePieceTokenizer(tmp_path)
    (tmp_path / "spiece.model").write_bytes(b"not a protobuf")
    with pytest.raises(ValueError, match="not a readable SentencePiece model"):
        SentencePieceTokenizer(tmp_path)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "spiece.model").write_bytes((spiece_dir / "spiece.model").read_bytes())
    (bad / "tokenizer_config.json").write_text('{"pad_token": "<nope>"}')
    with pytest.raises(ValueError, match="pad_token"):
        SentencePieceTokenizer(bad)
    with pytest.raises(TypeError, match="texts"):
        SentencePieceTokenizer(spiece_dir)(b"bytes")


def test_get_tokenizer_for_siglip_configs(spiece_dir):
    """A SigLIP config records its vocabulary in text.hf_tokenizer_name: a folder gives the SentencePiece
    tokenizer at the model's context length; a hub name (the named configs') is downloaded (tests/text/
    test_hub_tokenizer.py); a name that is neither is refused saying what to set."""
    import clipforge
    from clipforge.models import get_model_config

    base = get_model_config("ViT-B-16-SigLIP")
    assert base.text.hf_tokenizer_name == "timm/ViT-B-16-SigLIP"
    missing = base.replace(text=dataclasses.replace(base.text, hf_tokenizer_name="/no/such/siglip/folder"))
    with pytest.raises(ValueError, match="neither a local folder nor a hub repository"):
        clipforge.get_tokenizer(missing)
    local = base.replace(text=dataclasses.replace(base.text, hf_tokenizer_name=str(spiece_dir)))
    tok = clipforge.get_tokenizer(local)
    assert isinstance(tok, SentencePieceTokenizer) and tok("a cat").shape == (1, 64)
    assert clipforge.get_tokenizer(local, context_length=16)("a cat").shape == (1, 16)
