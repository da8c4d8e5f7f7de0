"""A tiny Gemma-shaped tokenizer folder, laid out as open_clip's SigLIP 2 hub repositories (timm/ViT-*-SigLIP2*).

Gemma's conventions: BPE with byte fallback, `<pad>` 0 / `<eos>` 1 / `<bos>` 2 / `<unk>` 3 / `<mask>` 4, spaces
normalised to "▁" and split after each space (what transformers' GemmaTokenizer builds), a post-processor
prepending `<bos>`; trained on a multilingual corpus (CJK, Arabic, Devanagari, Cyrillic, Greek, emoji) so that
both merges and byte fallback are exercised. `tokenizer_config.json` names the class and the special tokens.
"""

from __future__ import annotations

import json
from pathlib import Path

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
# Punctuation and underscores (removed / spaced by canonicalisation), case, HTML entities, unseen scripts, long rows.
EXTRA = [
    "", "  lots   of\tspace  ", "UPPER_case_With_Underscores", "x" * 100, "ÅNGSTRÖM ΣΊΣΥΦΟΣ", "ქართული ენა 🦄",
    "Tom &amp; Jerry: a \"cartoon\" (1940)!", "مرحبا، كيف حالك؟", "नमस्ते! आप कैसे हैं?", "你好，世界！🌍",
]
SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
# The folder layouts a SigLIP 2 tokenizer comes in (make_gemma_folder's `variant`):
#   "stock": Gemma's own files: a post-processor prepending <bos>, no add_*_token flags in tokenizer_config.json;
#   "siglip2": the real timm/ViT-*-SigLIP2* and google/siglip2-* files, written by GemmaTokenizerFast(
#       add_bos_token=False, add_eos_token=True).save_pretrained: post-processor `$A <eos>` and both flags;
#   "flags-only": the flags of "siglip2" over the stock <bos> post-processor (transformers follows the file);
#   "json-only": tokenizer.json alone (stock post-processor), no tokenizer_config.json / special_tokens_map.json.
VARIANTS = ("stock", "siglip2", "flags-only", "json-only")


def make_gemma_folder(folder: Path, variant: str = "stock") -> Path:
    """Write tokenizer.json + tokenizer_config.json (+ special_tokens_map.json) into `folder`; return it."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    folder.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.pre_tokenizer = pre_tokenizers.Split(pattern=" ", behavior="merged_with_previous", invert=False)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    byte_tokens = [f"<0x{i:02X}>" for i in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=700, special_tokens=SPECIALS + byte_tokens, show_progress=False)
    tok.train_from_iterator([t.lower() for t in CORPUS] * 20, trainer)
    if variant == "siglip2":
        tok.post_processor = processors.TemplateProcessing(
            single="$A:0 <eos>:0", pair="$A:0 <eos>:0 $B:1 <eos>:1", special_tokens=[("<eos>", 1)]
        )
    else:
        tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    tok.save(str(folder / "tokenizer.json"))
    if variant == "json-only":
        return folder
    special = {"pad_token": "<pad>", "eos_token": "<eos>", "bos_token": "<bos>", "unk_token": "<unk>"}
    config = {"tokenizer_class": "GemmaTokenizer", "padding_side": "right", "model_max_length": 64, **special}
    if variant in ("siglip2", "flags-only"):
        config.update(add_bos_token=False, add_eos_token=True)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    (folder / "special_tokens_map.json").write_text(json.dumps(special))
    return folder
