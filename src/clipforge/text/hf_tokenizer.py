"""Tokenizers of Hugging Face text towers (XLM-R, RoBERTa, BERT), with open_clip's `HFTokenizer` behaviour.

A CLIP whose text tower is a Hugging Face encoder (models/hf_text.py) takes that encoder's own vocabulary.
`HFTokenizer` gives the same (N, context_length) ids open_clip's `HFTokenizer` does: each text cleaned with its
"whitespace" cleaning (ftfy, HTML unescaped twice, whitespace collapsed, no lowercasing), encoded with the
tokenizer's special tokens (`<s> ... </s>` for XLM-R), truncated to `context_length` with the end token kept,
then right-padded with the pad id to exactly `context_length`.

NLLB's tokenizer (tokenizer_config.json's tokenizer_class "NllbTokenizer") frames each text with a language code
token, as transformers' NllbTokenizer does: `[src_lang] ... </s>` (`legacy_behaviour`: `... </s> [src_lang]`), the
language being the `language` argument, else the config's `src_lang`, else "eng_Latn". open_clip's
`HFTokenizer(language=...)` has no effect on the ids (transformers resets the code to `src_lang` on every call),
so open_clip always gives the default; clipforge's `language` gives what `tokenizer.src_lang = language` does.

Sources: a folder holding `tokenizer.json` (the checkpoint's own file) is read with the Rust `tokenizers`
library, under the size cap of clipforge.safeio; anything else (a hub name such as "xlm-roberta-base", or a
folder with only slow-tokenizer files) goes through transformers' `AutoTokenizer`, which may download it.
`clipforge.get_tokenizer` never hands it a hub name: it first fetches the repository's tokenizer files through
weights/hub.py (`download_hf_text_tokenizer`: huggingface_hub's cache, HF_HUB_OFFLINE, a `HubDownloadError`
naming the repository when offline or unreachable) and reads the snapshot folder.
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import ftfy
import numpy as np
import torch

from ..safeio import read_text_file
from .sentencepiece import canonicalize_text
from .tokenizer import as_text_list

MAX_TOKENIZER_FILE_BYTES = 64 * 2**20  # XLM-R's tokenizer.json is 17 MB
_PAD_CANDIDATES = ("<pad>", "[PAD]")


def clean_whitespace(text: str) -> str:
    """open_clip's "whitespace" cleaning: ftfy, HTML unescaped twice, whitespace collapsed; case is kept."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return " ".join(text.split()).strip()


def _basic_clean(text: str) -> str:
    return html.unescape(html.unescape(ftfy.fix_text(text))).strip()


# open_clip's tokenizer_kwargs.clean choices (open_clip.tokenizer.get_clean_fn).
CLEANERS = {
    "whitespace": clean_whitespace,
    "canonicalize": lambda text: canonicalize_text(_basic_clean(text)),
    "lower": lambda text: clean_whitespace(text).lower(),
    # transformers' Siglip2Processor cleans nothing and its Siglip2Tokenizer lowercases: the text as is here;
    # HFTokenizer puts a tokenizers `Lowercase` step first in the tokenizer.json normaliser (a final capital sigma
    # gives "σ" there, where str.lower gives "ς").
    "lowercase_only": lambda text: text,
}
# The cleanings a Gemma (SigLIP 2) tokenizer.json is read with: open_clip's configs' and transformers' Siglip2's.
GEMMA_CLEANINGS = ("canonicalize", "lowercase_only", "lower", "whitespace")
NLLB_DEFAULT_LANGUAGE = "eng_Latn"  # transformers' NllbTokenizer default src_lang


def _check_context_length(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 2:
        raise ValueError(f"context_length must be an int >= 2 (room for the start and end tokens), got {value!r}")
    return int(value)


def _tokenizer_config(folder: Path) -> dict[str, Any]:
    """tokenizer_config.json of a tokenizer folder as a dict ({} when absent)."""
    path = folder / "tokenizer_config.json"
    if not path.is_file():
        return {}
    try:
        data = json.loads(read_text_file(path, what="tokenizer_config.json"))
    except ValueError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    return data if isinstance(data, dict) else {}


def _nllb_post_processor(tokenizer, folder: Path, config: dict[str, Any], language: str | None):
    """(language, post-processor) framing each text with its language code, as transformers' NllbTokenizer."""
    from tokenizers import processors

    language = language or config.get("src_lang") or NLLB_DEFAULT_LANGUAGE
    lang_id = tokenizer.token_to_id(language) if isinstance(language, str) else None
    if lang_id is None:
        codes = [t for t in tokenizer.get_vocab(with_added_tokens=True) if len(t) == 8 and t[3] == "_"]
        raise ValueError(
            f"{folder}: language {language!r} is not a language code of this NLLB tokenizer; use one of its codes "
            f"such as {sorted(codes)[:6]} (FLORES-200 spelling: 'fra_Latn', 'zho_Hans')"
        )
    eos = config.get("eos_token", "</s>")
    eos = eos.get("content") if isinstance(eos, dict) else eos
    eos_id = tokenizer.token_to_id(eos)
    if eos_id is None:
        raise ValueError(f"{folder}: the end token {eos!r} of tokenizer_config.json is not in tokenizer.json")
    special = [(eos, eos_id), (language, lang_id)]
    if config.get("legacy_behaviour", False):
        single, pair = ["$A", eos, language], ["$A", "$B", eos, language]
    else:
        single, pair = [language, "$A", eos], [language, "$A", "$B", eos]
    return language, processors.TemplateProcessing(single=single, pair=pair, special_tokens=special)


def is_transformers_siglip2_folder(folder: Path, config: dict[str, Any] | None = None) -> bool:
    """Whether transformers' AutoTokenizer reads `folder` as a `Siglip2Tokenizer` (which lowercases every text).

    It does for a transformers SigLIP 2 checkpoint (config.json's model_type "siglip2": transformers 5 maps that
    model type to Siglip2Tokenizer whatever class tokenizer_config.json names) or a tokenizer_config.json naming
    Siglip2Tokenizer; open_clip's SigLIP 2 folders (timm/ViT-*-SigLIP2*) name GemmaTokenizer and have no such
    config.json, so they are read as Gemma's tokenizer (no lowercasing: open_clip's cleaning lowercases)."""
    config = _tokenizer_config(folder) if config is None else config
    if str(config.get("tokenizer_class", "")).startswith("Siglip2"):
        return True
    path = folder / "config.json"
    if not path.is_file():
        return False
    try:
        model = json.loads(read_text_file(path, what="config.json"))
    except ValueError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc}); fix or delete the file") from exc
    return isinstance(model, dict) and model.get("model_type") == "siglip2"


def gemma_tokenizer(folder: str | os.PathLike, context_length: int = 64, clean: str | None = None) -> HFTokenizer:
    """The tokenizer of a folder holding a Gemma-vocabulary `tokenizer.json` (SigLIP 2), as its references read it.

    Every clipforge path to such a folder comes here, so they all give the same ids. The framing is the FILE's:
    the tokenizer.json post-processor (`$A <eos>` in the real timm/google repositories), which is what
    transformers' AutoTokenizer applies -- transformers 5 drops tokenizer_config.json's add_bos_token /
    add_eos_token when a tokenizer.json is present -- and so what open_clip's HFTokenizer gives. The cleaning is
    the model's: `clean` when the caller has a model config saying it (`text.tokenizer_clean`, so a folder
    written from a Siglip2Model keeps "lowercase_only" after a save in any format); with `clean=None` (a bare
    folder, no model config) the folder tells: a transformers SigLIP 2 folder is lowercased by its Siglip2Tokenizer
    and nothing else ("lowercase_only": the Siglip2Processor cleans nothing), any other folder takes open_clip's
    SigLIP 2 cleaning ("canonicalize"). Rows are truncated keeping the framing, padded with the pad token (`<pad>`
    when none is named) on the side AutoTokenizer pads.
    """
    folder = Path(folder)
    config = _tokenizer_config(folder)
    if clean is None:
        clean = "lowercase_only" if is_transformers_siglip2_folder(folder, config) else "canonicalize"
    elif clean not in GEMMA_CLEANINGS:
        raise ValueError(
            f"text.tokenizer_clean must be one of {GEMMA_CLEANINGS} for a SigLIP 2 tokenizer, got {clean!r}"
        )
    siglip2 = clean == "lowercase_only"  # read as transformers' Siglip2Tokenizer (its padding-side default too)
    return HFTokenizer(folder, context_length, clean=clean, padding_side=_padding_side(folder, config, siglip2))


def _padding_side(folder: Path, config: dict[str, Any], siglip2: bool) -> str:
    """The side AutoTokenizer pads a Gemma folder on: tokenizer_config.json's padding_side, else the tokenizer.json
    padding direction, else the class default -- "left" for GemmaTokenizer / Siglip2Tokenizer, "right" for the
    generic backend a bare tokenizer.json gets. The real SigLIP 2 repositories say "right"."""
    side = config.get("padding_side")
    if side in ("left", "right"):
        return side
    path = folder / "tokenizer.json"
    try:
        padding = json.loads(read_text_file(path, MAX_TOKENIZER_FILE_BYTES, "tokenizer.json")).get("padding")
    except ValueError as exc:
        raise ValueError(f"{path}: not a readable tokenizers file ({exc})") from exc
    if isinstance(padding, dict) and padding.get("direction") in ("Left", "Right"):
        return padding["direction"].lower()
    gemma = str(config.get("tokenizer_class", "")).startswith("Gemma")
    return "left" if siglip2 or gemma else "right"


def _pad_token(folder: Path, vocab: dict[str, int]) -> tuple[str, int]:
    """The pad token of a tokenizer folder: tokenizer_config.json / special_tokens_map.json, else <pad> or [PAD]."""
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        path = folder / name
        if path.is_file():
            try:
                data = json.loads(read_text_file(path, what=name))
            except ValueError as exc:
                raise ValueError(f"{path}: not valid JSON ({exc})") from exc
            token = data.get("pad_token") if isinstance(data, dict) else None
            if isinstance(token, dict):  # AddedToken serialisation
                token = token.get("content")
            if isinstance(token, str) and token in vocab:
                return token, vocab[token]
    for token in _PAD_CANDIDATES:
        if token in vocab:
            return token, vocab[token]
    raise ValueError(
        f"{folder}: cannot tell the tokenizer's pad token (no pad_token in tokenizer_config.json and neither "
        f"{' nor '.join(_PAD_CANDIDATES)} in the vocabulary); add \"pad_token\" to tokenizer_config.json"
    )


class HFTokenizer:
    """Texts -> (N, context_length) int64 ids for a Hugging Face text tower, as open_clip's `HFTokenizer`.

    Args:
        source: a folder with `tokenizer.json` (read with `tokenizers`, nothing downloaded), or a hub name /
            folder for transformers' `AutoTokenizer`.
        context_length: ids per row, special tokens included (open_clip uses 77 for its HF-text models).
        cache_dir: AutoTokenizer's download cache (hub names only).
        clean: text cleaning before tokenization, open_clip's choices: "whitespace" (its HF default),
            "canonicalize" (lowercased, punctuation removed: ViT-L-14-worldwide) or "lower"; and "lowercase_only",
            transformers' Siglip2Tokenizer (tokenizer.json folders: a `Lowercase` normaliser step, no other cleaning).
        language: NLLB only: the language code each text is framed with (e.g. "fra_Latn"); default the
            tokenizer's `src_lang`, else "eng_Latn".
        padding_side: "right" (open_clip's towers) or "left"; tokenizer.json folders only (`gemma_tokenizer`
            passes the side transformers would pad a SigLIP 2 folder on).

    Attributes:
        pad_token_id: the id rows are padded with (the text tower's attention mask is `ids != pad_token_id`).
        vocab_size: number of ids, added tokens included.
        language: the NLLB language code in use, None for other tokenizers.
    """

    clean: str = "whitespace"  # class defaults: what an instance set up without __init__ (a subclass) gets
    language: str | None = None
    padding_side: str = "right"

    def __init__(
        self,
        source: str | os.PathLike,
        context_length: int = 77,
        *,
        cache_dir: str | None = None,
        clean: str = "whitespace",
        language: str | None = None,
        padding_side: str = "right",
    ) -> None:
        self.source = os.fspath(source)
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        self.padding_side = padding_side
        self.context_length = _check_context_length(context_length)
        if clean not in CLEANERS:
            raise ValueError(f"clean must be one of {sorted(CLEANERS)}, got {clean!r}")
        self.clean = clean
        self.language = None
        folder = Path(self.source)
        self._fast = None
        self._auto = None
        if (folder / "tokenizer.json").exists():  # a FIFO or device is refused by read_text_file, not skipped
            from tokenizers import Tokenizer

            path = folder / "tokenizer.json"
            text = read_text_file(path, MAX_TOKENIZER_FILE_BYTES, "tokenizer.json")
            try:
                tokenizer = Tokenizer.from_str(text)
            except Exception as exc:  # tokenizers raises its own Exception subclass for bad files
                raise ValueError(f"{path}: not a readable tokenizers file ({exc})") from exc
            vocab = tokenizer.get_vocab(with_added_tokens=True)
            self._pad_token, self.pad_token_id = _pad_token(folder, vocab)
            config = _tokenizer_config(folder)
            if str(config.get("tokenizer_class", "")).startswith("Nllb"):
                self.language, tokenizer.post_processor = _nllb_post_processor(tokenizer, folder, config, language)
                text = tokenizer.to_str()
            elif clean == "lowercase_only":  # lowercase first, as transformers' Siglip2Tokenizer
                from tokenizers import normalizers

                steps = [normalizers.Lowercase()] + ([tokenizer.normalizer] if tokenizer.normalizer else [])
                tokenizer.normalizer = normalizers.Sequence(steps)
                text = tokenizer.to_str()
            self._json = text
            self._fast = {}  # context length -> a Tokenizer set to truncate and pad to it (never mutated after)
            self._fast_vocab = tokenizer
            self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        else:
            if clean == "lowercase_only":
                raise ValueError(
                    f"{self.source!r} holds no tokenizer.json: clean='lowercase_only' (transformers' Siglip2Tokenizer) "
                    "lowercases in the tokenizer.json normaliser; point at the folder with the model's tokenizer.json"
                )
            try:
                from transformers import AutoTokenizer
            except ImportError as exc:  # pragma: no cover - the test environment has transformers
                raise ImportError(
                    f"{self.source!r} holds no tokenizer.json; reading it needs transformers: pip install transformers"
                ) from exc
            # Never code from the folder or hub repo (a tokenizer_config.json auto_map): transformers' classes only.
            self._auto = AutoTokenizer.from_pretrained(self.source, cache_dir=cache_dir, trust_remote_code=False)
            if self._auto.pad_token_id is None:
                raise ValueError(f"the tokenizer {self.source!r} has no pad token; a CLIP text tower needs one")
            self.pad_token_id = int(self._auto.pad_token_id)
            self.vocab_size = len(self._auto)
            if hasattr(self._auto, "src_lang"):  # NLLB: the code is reset to src_lang on every call
                if language is not None:
                    self._auto.src_lang = language
                self.language = self._auto.src_lang
        if language is not None and self.language is None:
            raise ValueError(f"language={language!r} applies to NLLB tokenizers only; {self.source!r} is not one")

    def __repr__(self) -> str:
        extra = f", language={self.language!r}" if self.language else ""
        return f"HFTokenizer({self.source!r}, context_length={self.context_length}{extra})"

    def __call__(self, texts: str | Iterable[str], context_length: int | None = None) -> torch.LongTensor:
        """Ids of `texts` as a (N, context_length) int64 tensor (N = 1 for a single str)."""
        texts = [CLEANERS[self.clean](t) for t in as_text_list(texts)]
        length = self.context_length if context_length is None else _check_context_length(context_length)
        if not texts:
            return torch.zeros((0, length), dtype=torch.long)
        if self._auto is not None:
            return self._auto(
                texts, return_tensors="pt", max_length=length, padding="max_length", truncation=True
            ).input_ids.long()
        encodings = self._fixed_length(length).encode_batch(texts)
        return torch.tensor(np.asarray([e.ids for e in encodings], dtype=np.int64))

    @property
    def eot_token_id(self) -> int:
        """The id that ends every sequence (XLM-R/RoBERTa `</s>`, BERT `[SEP]`), as CLIPTokenizer's end token.

        Read from the tokenizer's own template (the last non-padding id of an empty text), so no special
        token name is assumed; the trainer keeps it on rows a CLIPA phase truncates.
        """
        row = self([""], 8)[0]  # (8,)
        real = row[row != self.pad_token_id]
        if real.numel() == 0:
            raise ValueError(f"{self.source}: this tokenizer adds no end token to a text (no special tokens)")
        return int(real[-1])

    def _fixed_length(self, length: int):
        """A `tokenizers.Tokenizer` that truncates (keeping the special tokens) and pads to `length`.

        One per length, configured once: the Rust object's truncation and padding are settings on the object,
        and changing them per call would race between threads sharing this tokenizer."""
        tokenizer = self._fast.get(length)
        if tokenizer is None:
            from tokenizers import Tokenizer

            tokenizer = Tokenizer.from_str(self._json)
            tokenizer.enable_truncation(max_length=length)
            tokenizer.enable_padding(
                length=length, pad_id=self.pad_token_id, pad_token=self._pad_token, direction=self.padding_side
            )
            self._fast[length] = tokenizer
        return tokenizer

    def decode(self, ids: Iterable[int] | torch.Tensor, *, skip_special_tokens: bool = True) -> str:
        """Text of one id row (padding and, by default, the special tokens dropped)."""
        if isinstance(ids, torch.Tensor):
            if ids.ndim != 1:
                raise ValueError(f"decode takes one 1-D id sequence, got shape {tuple(ids.shape)}")
            ids = ids.tolist()
        ids = [int(i) for i in ids if int(i) != self.pad_token_id]
        if self._auto is not None:
            return self._auto.decode(ids, skip_special_tokens=skip_special_tokens)
        return self._fast_vocab.decode(ids, skip_special_tokens=skip_special_tokens)
