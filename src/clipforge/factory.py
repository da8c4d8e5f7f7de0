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
import re

from .image import build_transform
from .models.clip import CLIP
from .models.config import CLIPConfig, PreprocessConfig
from .models.registry import get_model_config
from .text import CLIPTokenizer
from .weights.hub import HUB_PREFIX
from .weights.loading import LOCAL_DIR_PREFIX, read_config

ModelLike = CLIP | CLIPConfig | str
_HUB_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")  # huggingface_hub's org/name form
_HUB_TOKENIZER_NAME = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")  # org/name, or a legacy "roberta-base"


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
    relative = config.text.hf_tokenizer_name or ""
    if relative == "." or relative.startswith("./"):  # readers resolve these against their folder; never the cwd
        raise ValueError(
            f"text.hf_tokenizer_name is {config.text.hf_tokenizer_name!r}: relative to the checkpoint folder it was "
            "written in; load the model from that folder (or pass 'local-dir:FOLDER') to use its tokenizer"
        )
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
        length = context_length or config.text.context_length
        tokenizer_json = find_tokenizer_json(folder) if find_spiece_model(folder) is None else None
        if tokenizer_json is not None:
            from .text.hf_tokenizer import gemma_tokenizer  # SigLIP 2: cleaned as the folder's model config says

            return gemma_tokenizer(tokenizer_json.parent, length, clean=_gemma_clean(config))
        if find_spiece_model(folder) is not None:
            return load_siglip_tokenizer(folder, length)
    if config.text.hf_tokenizer_name and config.text.causal_mask:  # MetaCLIP 2: CLIP's tower, an HF vocabulary
        folder = name_or_model[len(LOCAL_DIR_PREFIX) :] if local else None
        if folder is not None and os.path.isfile(os.path.join(folder, "tokenizer.json")):  # the checkpoint's own
            config = config.replace(text=dataclasses.replace(config.text, hf_tokenizer_name=folder))
        return _hf_tokenizer(config, context_length, cache_dir)
    if config.text.hf_tokenizer_name:  # SigLIP: a SentencePiece vocabulary (text/sentencepiece.py)
        return _sentencepiece_tokenizer(name_or_model, config, context_length, cache_dir)
    if config.text.vocab_size != 49408:
        raise ValueError(
            f"this model's text tower has vocab_size {config.text.vocab_size}; only CLIP's BPE (49408) ships "
            "with clipforge"
        )
    return CLIPTokenizer(context_length=context_length or config.text.context_length)


def _sentencepiece_tokenizer(
    name_or_model: ModelLike, config: CLIPConfig, context_length: int | None, cache_dir: str | None = None
):
    """SigLIP's / SigLIP 2's tokenizer as open_clip reads it (its configs' tokenizer_kwargs clean="canonicalize").

    Source: the checkpoint folder's spiece.model (`local-dir:` names), else `text.hf_tokenizer_name`: a local
    folder, or a hub repository (the named configs': "timm/ViT-B-16-SigLIP2") whose tokenizer files are downloaded
    through huggingface_hub's cache (weights/hub.py: HF_ENDPOINT, HF_HUB_OFFLINE respected). A spiece.model is
    SigLIP's SentencePiece vocabulary; a tokenizer.json (SigLIP 2's Gemma vocabulary) is framed by its own
    post-processor, truncated and right-padded, as transformers' AutoTokenizer and open_clip's HFTokenizer do
    (text/hf_tokenizer.py `gemma_tokenizer`: the same reader as `local-dir:` names, so both give the same ids).
    Its cleaning is the model config's `text.tokenizer_clean` ("lowercase_only" for a model read from a transformers
    Siglip2Model, kept through every save); the default "whitespace" means "the family's": the tokenizer folder
    tells (a transformers SigLIP 2 folder lowercases only, any other canonicalises, as open_clip's configs ask).
    """
    from .text.hf_tokenizer import gemma_tokenizer
    from .text.sentencepiece import SentencePieceTokenizer, find_spiece_model

    length = context_length or config.text.context_length
    if isinstance(name_or_model, str) and name_or_model.startswith(LOCAL_DIR_PREFIX):
        folder = name_or_model[len(LOCAL_DIR_PREFIX) :]
        if find_spiece_model(folder) is not None:
            return SentencePieceTokenizer(folder, length)
    source = config.text.hf_tokenizer_name
    if not os.path.exists(source):
        if not _HUB_REPO_ID.fullmatch(source):
            raise ValueError(
                f"this model's tokenizer is {source!r}, which is neither a local folder nor a hub repository id "
                "(org/name); set text.hf_tokenizer_name to the folder holding its spiece.model or tokenizer.json"
            )
        from .weights.hub import TOKENIZER_SIDE_FILES, download_tokenizer

        what = f"tokenizer {source!r} (text.hf_tokenizer_name)"
        # config.json too: a transformers Siglip2Model repository (google/siglip2-*) is read as AutoTokenizer
        # reads it (Siglip2Tokenizer: lowercased, not canonicalised), which its model_type tells.
        side = (*TOKENIZER_SIDE_FILES, "config.json")
        source = os.fspath(download_tokenizer(source, what=what, cache=cache_dir, side_files=side))
    if find_spiece_model(source) is not None:
        return SentencePieceTokenizer(source, length)
    if os.path.isfile(os.path.join(source, "tokenizer.json")):  # the reader `local-dir:` names use too
        return gemma_tokenizer(source, length, clean=_gemma_clean(config))
    raise ValueError(
        f"this model's tokenizer folder {source!r} holds neither spiece.model (SigLIP) nor tokenizer.json "
        "(SigLIP 2); point text.hf_tokenizer_name at the checkpoint folder or hub repository that has one"
    )


def _gemma_clean(config: CLIPConfig) -> str | None:
    """The cleaning a SigLIP 2 (Gemma tokenizer.json) model config asks for; None ("whitespace", the default: no
    cleaning recorded) lets gemma_tokenizer take the folder's (transformers Siglip2 folder or open_clip's)."""
    clean = config.text.tokenizer_clean
    return None if clean == "whitespace" else clean


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
    if not os.path.exists(source):  # a hub name ("xlm-roberta-base", "facebook/nllb-200-distilled-600M")
        source = os.fspath(_download_hf_text_tokenizer(source, cache_dir))
    return HFTokenizer(source, length, cache_dir=cache_dir, clean=config.text.tokenizer_clean, language=language)


def _download_hf_text_tokenizer(source: str, cache_dir: str | None):
    """The local snapshot folder of a hub tokenizer, through weights/hub.py (huggingface_hub's cache, HF_ENDPOINT
    and HF_HUB_OFFLINE respected, a `HubDownloadError` naming the repository and what to do when it cannot be had),
    so the ids are those of the files transformers' AutoTokenizer would fetch, never its raw OSError offline."""
    if not _HUB_TOKENIZER_NAME.fullmatch(source):
        raise ValueError(
            f"this model's tokenizer is {source!r}, which is neither a local folder nor a hub repository id "
            "(org/name or a legacy name such as 'xlm-roberta-base'); set text.hf_tokenizer_name to the folder "
            "holding its tokenizer.json"
        )
    from .weights.hub import download_hf_text_tokenizer

    return download_hf_text_tokenizer(source, what=f"tokenizer {source!r} (text.hf_tokenizer_name)", cache=cache_dir)


def get_preprocess(name_or_model: ModelLike | PreprocessConfig = "ViT-B-32", train: bool = False, **train_options):
    """The image transform (PIL image -> FloatTensor[3, S, S]) the model expects; S is the model's
    `vision.image_size`, which its config keeps the preprocessing size equal to (issue 8)."""
    cfg = name_or_model if isinstance(name_or_model, PreprocessConfig) else _config(name_or_model).preprocess
    return build_transform(cfg, train=train, **train_options)
