"""SigLIP's SentencePiece tokenizer, as open_clip's `HFTokenizer(..., clean="canonicalize")` over transformers'
`SiglipTokenizer` (Zhai et al. 2023; big_vision's text preprocessing).

Every text is canonicalised the way big_vision / open_clip do it (`canonicalize_text`): "_" becomes a space,
ASCII punctuation (`string.punctuation`) is removed, the text is lowercased and runs of whitespace collapse to
one space. The SentencePiece model then encodes it (no start token), the end token `</s>` is appended, rows
longer than `context_length` are cut keeping the end token last, and shorter rows are right-padded with the pad
id -- SiglipTokenizer's pad token is `</s>` itself, so SigLIP rows end in a run of end ids (the text tower pools
the last position, which is why the padding must be exactly this).

Source: the checkpoint's own `spiece.model` (a folder holding it, or the file), read under clipforge.safeio's
size cap (never unpickled: a SentencePiece model is a protobuf). `tokenizer_config.json` beside it may rename
the pad / end tokens, as transformers reads it. transformers' SiglipTokenizer on raw text differs from this
only in "_" (it deletes underscores where open_clip's cleaning turns them into spaces): the SigLIP models here
are open_clip's, so open_clip's cleaning is the one used.
"""

from __future__ import annotations

import json
import os
import string
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..safeio import read_regular_file, read_text_file
from .tokenizer import as_text_list

SPIECE_NAME = "spiece.model"
MAX_SPIECE_BYTES = 64 * 2**20  # SigLIP i18n's 250k-piece model is ~4 MB
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def canonicalize_text(text: str) -> str:
    """open_clip's / big_vision's canonical form: "_" -> " ", punctuation removed, lowercase, whitespace collapsed."""
    text = text.replace("_", " ").translate(_PUNCTUATION).lower()
    return " ".join(text.split())


def _check_context_length(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"context_length must be an int >= 1 (room for the end token), got {value!r}")
    return int(value)


# The pad / end tokens when tokenizer_config.json names none: SiglipTokenizer's (spiece.model) and Gemma's
# (SigLIP 2's tokenizer.json).
SPIECE_DEFAULTS = {"pad_token": "</s>", "eos_token": "</s>"}
GEMMA_DEFAULTS = {"pad_token": "<pad>", "eos_token": "<eos>"}


def _special_tokens(folder: Path, defaults: dict[str, str] = SPIECE_DEFAULTS) -> dict[str, str]:
    """pad_token / eos_token named by tokenizer_config.json beside the model, `defaults` for those it leaves out."""
    tokens = dict(defaults)
    path = folder / "tokenizer_config.json"
    if not path.is_file():
        return tokens
    try:
        data = json.loads(read_text_file(path, what="tokenizer_config.json"))
    except ValueError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc}); fix or delete the file") from exc
    for name in tokens:
        value = data.get(name) if isinstance(data, dict) else None
        if isinstance(value, dict):  # AddedToken serialisation
            value = value.get("content")
        if isinstance(value, str):
            tokens[name] = value
    return tokens


def _find_file(source: str | os.PathLike, name: str, suffix: str) -> Path | None:
    """`source` itself when it is a file ending in `suffix`, else the folder's `name`; None when there is none."""
    path = Path(source)
    if path.is_file() and path.name.endswith(suffix):
        return path
    candidate = path / name
    return candidate if candidate.exists() else None  # a FIFO or device: refused when read


def find_spiece_model(source: str | os.PathLike) -> Path | None:
    """The `spiece.model` of a folder (or the file itself), None when there is none."""
    return _find_file(source, SPIECE_NAME, ".model")


class SentencePieceTokenizer:
    """Texts -> (N, context_length) int64 ids for a SigLIP text tower (open_clip's SigLIP tokenization).

    Args:
        source: a folder holding `spiece.model` (and optionally `tokenizer_config.json`), or the model file.
        context_length: ids per row, the end token included (SigLIP: 64; ViT-SO400M-14-SigLIP: 16).

    Attributes:
        pad_token_id / eos_token_id: the padding and end ids (both `</s>` for SigLIP's vocabularies).
        vocab_size: number of pieces.
    """

    def __init__(self, source: str | os.PathLike, context_length: int = 64) -> None:
        import sentencepiece

        self.source = os.fspath(source)
        self.context_length = _check_context_length(context_length)
        model_path = find_spiece_model(source)
        if model_path is None:
            raise FileNotFoundError(
                f"{self.source}: no {SPIECE_NAME} there; pass the checkpoint folder holding SigLIP's SentencePiece "
                "model (open_clip / timm hub repositories ship it as spiece.model)"
            )
        proto = read_regular_file(model_path, MAX_SPIECE_BYTES, SPIECE_NAME)
        processor = sentencepiece.SentencePieceProcessor()
        try:
            processor.LoadFromSerializedProto(proto)
        except (RuntimeError, OSError) as exc:
            raise ValueError(f"{model_path}: not a readable SentencePiece model ({exc})") from exc
        self._sp = processor
        self.vocab_size = int(processor.get_piece_size())
        folder = model_path.parent
        tokens = _special_tokens(folder)
        self.eos_token_id = self._piece_id(tokens["eos_token"], model_path, "eos_token")
        self.pad_token_id = self._piece_id(tokens["pad_token"], model_path, "pad_token")

    def _piece_id(self, piece: str, model_path: Path, what: str) -> int:
        index = int(self._sp.piece_to_id(piece))
        if self._sp.id_to_piece(index) != piece:  # unknown pieces map to the unk id
            raise ValueError(
                f"{model_path}: the {what} {piece!r} is not a piece of this SentencePiece model; set \"{what}\" in "
                "tokenizer_config.json beside it to the model's own end / pad piece"
            )
        return index

    def __repr__(self) -> str:
        return f"SentencePieceTokenizer({self.source!r}, context_length={self.context_length})"

    def encode(self, text: str) -> list[int]:
        """Ids of one text, canonicalised, with the end token and without padding or truncation."""
        return [int(i) for i in self._sp.encode(canonicalize_text(text))] + [self.eos_token_id]

    def __call__(self, texts: str | Iterable[str], context_length: int | None = None) -> torch.LongTensor:
        """Ids of `texts` as a (N, context_length) int64 tensor (N = 1 for a single str)."""
        texts = as_text_list(texts)
        length = self.context_length if context_length is None else _check_context_length(context_length)
        out = np.full((len(texts), length), self.pad_token_id, dtype=np.int64)  # (N, L)
        for row, ids in enumerate(self._sp.encode([canonicalize_text(t) for t in texts])):
            ids = list(ids)[: length - 1] + [self.eos_token_id]  # truncation keeps the end token
            out[row, : len(ids)] = ids
        return torch.from_numpy(out)

    def decode(self, ids: Iterable[int] | torch.Tensor) -> str:
        """Text of one id row, padding and end tokens dropped (canonicalisation is not undone)."""
        if isinstance(ids, torch.Tensor):
            if ids.ndim != 1:
                raise ValueError(f"decode takes one 1-D id sequence, got shape {tuple(ids.shape)}")
            ids = ids.tolist()
        drop = {self.pad_token_id, self.eos_token_id}
        return self._sp.decode([int(i) for i in ids if int(i) not in drop])


# ---------------------------------------------------------------------------------------------- tokenizer.json

TOKENIZER_JSON_NAME = "tokenizer.json"
MAX_TOKENIZER_JSON_BYTES = 256 * 2**20  # Gemma's 256k-piece tokenizer.json (SigLIP 2) is ~33 MB


def find_tokenizer_json(source: str | os.PathLike) -> Path | None:
    """The `tokenizer.json` of a folder (or the file itself), None when there is none."""
    return _find_file(source, TOKENIZER_JSON_NAME, ".json")


class TokenizerJsonTokenizer:
    """Texts -> (N, context_length) int64 ids for SigLIP 2's text tower, from a `tokenizer.json` (no spiece.model).

    SigLIP 2 (Tschannen et al. 2025) tokenizes with Gemma's 256k-piece SentencePiece vocabulary, which its
    checkpoints ship only as a Hugging Face `tokenizers` file. Its conventions (big_vision's SigLIP 2
    preprocessing; transformers' Siglip2Tokenizer for the first two):
      - the text is lowercased (the model was trained on lowercased captions; no punctuation stripping, unlike
        SigLIP 1's canonicalisation) by tokenizers' Lowercase as Siglip2Tokenizer does, then encoded by the
        file's normaliser / pre-tokenizer / model;
      - no start token: the file's post-processor (Gemma's template prepends `<bos>`) is not applied;
      - the end token (`<eos>`) is appended and kept when a row is cut to `context_length` ("sticky" end);
      - rows are right-padded to `context_length` (64 for SigLIP 2) with the pad token (`<pad>`): the text tower
        pools the last position, so the padding must be exactly this.
    `tokenizer_config.json` beside the file may rename the pad / end tokens, as transformers reads it.
    These are the ids of the real SigLIP 2 files (whose post-processor is `$A <eos>`) through transformers'
    Siglip2Tokenizer; for a file whose post-processor frames otherwise, `clipforge.get_tokenizer` and
    `load_siglip_tokenizer` follow the file (text/hf_tokenizer.py `gemma_tokenizer`), this class does not.

    Args:
        source: a folder holding `tokenizer.json` (and optionally `tokenizer_config.json`), or the file itself.
        context_length: ids per row, the end token included.

    Attributes:
        pad_token_id / eos_token_id: the padding and end ids; vocab_size: pieces plus added tokens.
    """

    def __init__(self, source: str | os.PathLike, context_length: int = 64, lowercase: bool = True) -> None:
        from tokenizers import Tokenizer, normalizers

        self.source = os.fspath(source)
        self.context_length = _check_context_length(context_length)
        self.lowercase = bool(lowercase)
        # tokenizers' Lowercase (Rust char-wise lowercasing) as transformers' Siglip2Tokenizer applies it: unlike
        # Python's str.lower it keeps a word-final capital sigma as "σ" rather than "ς".
        self._lower = normalizers.Lowercase()
        path = find_tokenizer_json(source)
        if path is None:
            raise FileNotFoundError(
                f"{self.source}: no {TOKENIZER_JSON_NAME} there; pass the checkpoint folder holding SigLIP 2's "
                "tokenizer.json (Gemma's vocabulary) or a folder with spiece.model for SentencePieceTokenizer"
            )
        text = read_text_file(path, MAX_TOKENIZER_JSON_BYTES, TOKENIZER_JSON_NAME)
        try:
            self._tok = Tokenizer.from_str(text)
        except Exception as exc:  # tokenizers raises a bare Exception for malformed files
            raise ValueError(f"{path}: not a readable Hugging Face tokenizers file ({exc})") from exc
        self._tok.no_padding()
        self._tok.no_truncation()
        self.vocab_size = int(self._tok.get_vocab_size(with_added_tokens=True))
        tokens = _special_tokens(path.parent, GEMMA_DEFAULTS)
        self.eos_token_id = self._token_id(tokens["eos_token"], path, "eos_token")
        self.pad_token_id = self._token_id(tokens["pad_token"], path, "pad_token")

    def _token_id(self, token: str, path: Path, what: str) -> int:
        index = self._tok.token_to_id(token)
        if index is None:
            raise ValueError(
                f"{path}: the {what} {token!r} is not in this tokenizer's vocabulary; set \"{what}\" in "
                "tokenizer_config.json beside it to the vocabulary's own end / pad token"
            )
        return int(index)

    def __repr__(self) -> str:
        return f"TokenizerJsonTokenizer({self.source!r}, context_length={self.context_length})"

    def _prepare(self, text: str) -> str:
        return self._lower.normalize_str(text) if self.lowercase else text

    def encode(self, text: str) -> list[int]:
        """Ids of one text (lowercased), with the end token and without padding or truncation."""
        return list(self._tok.encode(self._prepare(text), add_special_tokens=False).ids) + [self.eos_token_id]

    def __call__(self, texts: str | Iterable[str], context_length: int | None = None) -> torch.LongTensor:
        """Ids of `texts` as a (N, context_length) int64 tensor (N = 1 for a single str)."""
        texts = as_text_list(texts)
        length = self.context_length if context_length is None else _check_context_length(context_length)
        out = np.full((len(texts), length), self.pad_token_id, dtype=np.int64)  # (N, L)
        encodings = self._tok.encode_batch([self._prepare(t) for t in texts], add_special_tokens=False)
        for row, enc in enumerate(encodings):
            ids = list(enc.ids)[: length - 1] + [self.eos_token_id]  # truncation keeps the end token
            out[row, : len(ids)] = ids
        return torch.from_numpy(out)

    def decode(self, ids: Iterable[int] | torch.Tensor) -> str:
        """Text of one id row, padding and end tokens dropped (lowercasing is not undone)."""
        if isinstance(ids, torch.Tensor):
            if ids.ndim != 1:
                raise ValueError(f"decode takes one 1-D id sequence, got shape {tuple(ids.shape)}")
            ids = ids.tolist()
        drop = {self.pad_token_id, self.eos_token_id}
        return self._tok.decode([int(i) for i in ids if int(i) not in drop], skip_special_tokens=False)


def load_siglip_tokenizer(source: str | os.PathLike, context_length: int = 64):
    """The SigLIP-family tokenizer of a checkpoint folder: `spiece.model` (SigLIP) else `tokenizer.json` (SigLIP 2).

    A tokenizer.json folder is read by text/hf_tokenizer.py `gemma_tokenizer`, the one reader every clipforge path
    to a SigLIP 2 folder shares: framed by the file's own post-processor as transformers' AutoTokenizer and
    open_clip frame it (not TokenizerJsonTokenizer's fixed framing, which equals it only when the file says
    `$A <eos>`)."""
    if find_spiece_model(source) is not None:
        return SentencePieceTokenizer(source, context_length)
    if find_tokenizer_json(source) is not None:
        from .hf_tokenizer import gemma_tokenizer  # hf_tokenizer imports this module

        folder = Path(source)
        return gemma_tokenizer(folder.parent if folder.is_file() else folder, context_length)
    raise FileNotFoundError(
        f"{os.fspath(source)}: neither {SPIECE_NAME} (SigLIP) nor {TOKENIZER_JSON_NAME} (SigLIP 2) is there; pass "
        "the checkpoint folder that holds its tokenizer"
    )
