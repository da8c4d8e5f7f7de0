"""A tiny XLM-R-like Hugging Face text model folder, built offline, for the HF text tower and tokenizer tests.

`make_hf_text_folder(tmp)` trains a small Unigram tokenizer (SentencePiece-style, as XLM-R's) on a multilingual
corpus with Latin, CJK, Arabic, Devanagari, Cyrillic and emoji text, with XLM-R's special tokens and ids
(<s>=0, <pad>=1, </s>=2, <unk>=3) and its `<s> ... </s>` template, and writes it beside a tiny random
XLMRobertaConfig: the layout of a hub folder, which open_clip and transformers read as they read the real one.
"""

from __future__ import annotations

import json
from pathlib import Path

CORPUS = [
    "a photo of a cat sitting on the red table",
    "two dogs running on the beach at night",
    "Une photo d'un chat assis sur la table rouge, très jolie",
    "Ein Hund läuft über die Straße in München",
    "一只猫坐在红色的桌子上",
    "東京の夜景の写真です",
    "고양이가 탁자 위에 앉아 있다",
    "صورة قطة تجلس على الطاولة الحمراء",
    "लाल मेज पर बैठी एक बिल्ली की तस्वीर",
    "Фотография кошки на красном столе",
    "a smiling face 🙂 and a cat 🐱 with a heart ❤️ and a flag 🇫🇷",
    "café naïve crème brûlée São Paulo Łódź",
] * 8

XLMR_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]


def build_tokenizer(vocab_size: int = 300):
    """A trained `tokenizers.Tokenizer`: NFKC, Metaspace, Unigram, `<s> $A </s>` post-processing."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.Unigram())
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=XLMR_SPECIALS, unk_token="<unk>")
    tokenizer.train_from_iterator(CORPUS, trainer=trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    return tokenizer


def tiny_xlmr_fields(vocab_size: int) -> dict:
    """config.json fields of a tiny XLM-R (2 layers, width 32)."""
    return {
        "model_type": "xlm-roberta",
        "vocab_size": vocab_size,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 64,
        "max_position_embeddings": 80,
        "type_vocab_size": 1,
        "layer_norm_eps": 1e-5,
        "pad_token_id": 1,
        "bos_token_id": 0,
        "eos_token_id": 2,
    }


def make_hf_text_folder(root: Path) -> tuple[Path, dict]:
    """(folder, config.json fields): tokenizer.json + tokenizer_config.json + config.json of a tiny XLM-R."""
    folder = Path(root) / "tiny-xlmr"
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "bos_token": "<s>",
                "eos_token": "</s>",
                "pad_token": "<pad>",
                "unk_token": "<unk>",
                "model_max_length": 78,
            }
        )
    )
    fields = tiny_xlmr_fields(tokenizer.get_vocab_size())
    (folder / "config.json").write_text(json.dumps(fields))
    return folder, fields
