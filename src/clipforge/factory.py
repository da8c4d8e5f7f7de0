"""`get_tokenizer` and `get_preprocess`: the text and image front ends that belong to a model.

Both accept a model, a config, or an architecture name, so that `get_preprocess(model)` after
`load_model(...)` gives the preprocessing stored with the checkpoint (mean/std, resize mode) and
`get_preprocess("ViT-B-32")` the architecture's default. As in open_clip, a name may also be a whole
model, `hf-hub:org/repo` or `local-dir:/path` (or `ARCH:TAG`), whose config alone is read (downloaded
without the weights).
"""

from __future__ import annotations

import dataclasses
import os

from .image import build_transform
from .models.clip import CLIP
from .models.config import CLIPConfig, PreprocessConfig
from .models.registry import get_model_config
from .text import CLIPTokenizer
from .weights.hub import HUB_PREFIX
from .weights.loading import LOCAL_DIR_PREFIX, read_config

ModelLike = CLIP | CLIPConfig | str


def _config(name_or_model: ModelLike, cache_dir: str | None = None) -> CLIPConfig:
    if isinstance(name_or_model, CLIP):
        return name_or_model.config
    if isinstance(name_or_model, CLIPConfig):
        return name_or_model
    if isinstance(name_or_model, str):
        if name_or_model.startswith((HUB_PREFIX, LOCAL_DIR_PREFIX)) or ":" in name_or_model:
            return read_config(name_or_model, cache_dir=cache_dir)
        return get_model_config(name_or_model)
    raise TypeError(f"expected a CLIP model, a CLIPConfig or an architecture name, got {type(name_or_model).__name__}")


def get_tokenizer(
    name_or_model: ModelLike = "ViT-B-32",
    context_length: int | None = None,
    cache_dir: str | None = None,
    *,
    language: str | None = None,
) -> CLIPTokenizer:
    """A callable `texts -> LongTensor[N, context_length]` matching the model's text tower.

    `language` applies to NLLB-CLIP only: the language code each text is framed with (e.g. "fra_Latn"), since
    NLLB's encoder reads it first; default the tokenizer's `src_lang`, else "eng_Latn" (what open_clip gives).
    """
    config = _config(name_or_model, cache_dir)
    if config.text.is_hf:  # a Hugging Face text tower takes its own vocabulary (text/hf_tokenizer.py)
        return _hf_tokenizer(config, context_length, cache_dir, language)
    if language is not None:
        raise ValueError(
            f"language={language!r} applies to NLLB-CLIP's tokenizer only; this model's text tower is not an NLLB "
            "encoder (its tokenizer takes no language code)"
        )
    local = isinstance(name_or_model, str) and name_or_model.startswith(LOCAL_DIR_PREFIX)
    if local and config.vision.pool_type == "map":
        from .text.sentencepiece import find_spiece_model, find_tokenizer_json, load_siglip_tokenizer

        folder = name_or_model[len(LOCAL_DIR_PREFIX) :]  # a SigLIP / SigLIP 2 folder with its own tokenizer
        if find_spiece_model(folder) is not None or find_tokenizer_json(folder) is not None:
            return load_siglip_tokenizer(folder, context_length or config.text.context_length)
    if config.text.hf_tokenizer_name and config.text.causal_mask:  # MetaCLIP 2: CLIP's tower, an HF vocabulary
        folder = name_or_model[len(LOCAL_DIR_PREFIX) :] if local else None
        if folder is not None and os.path.isfile(os.path.join(folder, "tokenizer.json")):  # the checkpoint's own
            config = config.replace(text=dataclasses.replace(config.text, hf_tokenizer_name=folder))
        return _hf_tokenizer(config, context_length, cache_dir)
    if config.text.hf_tokenizer_name:  # SigLIP: a SentencePiece vocabulary (text/sentencepiece.py)
        return _sentencepiece_tokenizer(name_or_model, config, context_length)
    if config.text.vocab_size != 49408:
        raise ValueError(
            f"this model's text tower has vocab_size {config.text.vocab_size}; only CLIP's BPE (49408) ships "
            "with clipforge"
        )
    return CLIPTokenizer(context_length=context_length or config.text.context_length)


def _sentencepiece_tokenizer(name_or_model: ModelLike, config: CLIPConfig, context_length: int | None):
    """SigLIP's tokenizer from the checkpoint folder's spiece.model (`local-dir:` names) or from
    `text.hf_tokenizer_name` when that is a folder; a hub name is refused with what to pass instead."""
    from .text.sentencepiece import SentencePieceTokenizer, find_spiece_model

    length = context_length or config.text.context_length
    if isinstance(name_or_model, str) and name_or_model.startswith(LOCAL_DIR_PREFIX):
        folder = name_or_model[len(LOCAL_DIR_PREFIX) :]
        if find_spiece_model(folder) is not None:
            return SentencePieceTokenizer(folder, length)
    source = config.text.hf_tokenizer_name
    if find_spiece_model(source) is None:
        raise ValueError(
            f"this model's SentencePiece tokenizer is {source!r}, which is not a local folder holding spiece.model; "
            "download that repository's spiece.model and pass the folder: "
            "clipforge.text.sentencepiece.SentencePieceTokenizer(folder, context_length)"
        )
    return SentencePieceTokenizer(source, length)


def _hf_tokenizer(config: CLIPConfig, context_length: int | None, cache_dir: str | None, language: str | None = None):
    from .text.hf_tokenizer import HFTokenizer

    # A CLIP text transformer naming a tokenizer (MetaCLIP 2's XLM-V) reads it as open_clip does: its HFTokenizer,
    # "whitespace" cleaning, no separator stripping. SigLIP's bidirectional towers keep their SentencePiece path.
    source = config.text.hf_tokenizer_name or config.text.hf_model_name
    if not source:
        raise ValueError(
            "this model's Hugging Face text tower names no tokenizer (text.hf_tokenizer_name / text.hf_model_name); "
            "build one with clipforge.text.hf_tokenizer.HFTokenizer(folder_with_tokenizer_json)"
        )
    length = context_length or config.text.context_length
    return HFTokenizer(source, length, cache_dir=cache_dir, clean=config.text.tokenizer_clean, language=language)


def get_preprocess(name_or_model: ModelLike | PreprocessConfig = "ViT-B-32", train: bool = False, **train_options):
    """The image transform (PIL image -> FloatTensor[3, S, S]) the model expects; S is the model's
    `vision.image_size`, which its config keeps the preprocessing size equal to (issue 8)."""
    cfg = name_or_model if isinstance(name_or_model, PreprocessConfig) else _config(name_or_model).preprocess
    return build_transform(cfg, train=train, **train_options)
