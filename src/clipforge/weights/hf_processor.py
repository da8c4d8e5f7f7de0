"""The processor half of a Hugging Face CLIP folder: `preprocessor_config.json` and the tokenizer files.

transformers' `CLIPProcessor.from_pretrained(dir)` and `pipeline("zero-shot-image-classification", model=dir)`
need, beside `config.json` + weights (weights/hf.py), an image processor config and a tokenizer. clipforge writes
them from the model's `PreprocessConfig` and its packaged BPE vocabulary (text/vocab.py), and reads an image
processor config back into a `PreprocessConfig`.

Image processor (transformers `CLIPImageProcessor`): resize the shortest side to `size.shortest_edge`
(long side truncated, as torchvision does), centre-crop `crop_size`, scale by `rescale_factor`, normalise by
`image_mean` / `image_std`. That is clipforge's "shortest" mode; "squash" is `size={height, width}` without the
crop. "longest" (fit inside, pad) has no CLIPImageProcessor counterpart: it is written as "shortest" with a
warning. Reading maps rescale and normalisation into one mean/std pair (value = (x * r - m) / s equals
clipforge's (x / 255 - M) / S with M = m / (255 r), S = s / (255 r)), so any rescale/normalise setting is exact.

What no config can change (transformers 5.x): its centre crop starts at int((side - size) / 2), clipforge's (like
open_clip's and torchvision's) at round((side - size) / 2), halves to even, so when side - size is 3 mod 4 the
crops are one pixel apart. Its PIL backend (`backend="pil"`) otherwise gives clipforge's pixels; its default
torchvision backend resizes uint8 tensors with torch's kernels, mostly within one grey level of Pillow's.

Tokenizer: the vocabulary of openai/clip-vit-base-patch32, i.e. clipforge's ids with the special tokens
spelled `<|startoftext|>` (49406) / `<|endoftext|>` (49407) as transformers spells them. transformers pads
with `<|endoftext|>` where clipforge pads with 0; its CLIP pools at the first end token under a causal mask,
so the padding never reaches the features. Its normaliser is NFC + whitespace + lowercase (no ftfy), so texts
that ftfy would repair can tokenize differently; ordinary text gives clipforge's ids.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from ..atomic import atomic_write_bytes
from ..models.config import OPENAI_MEAN, OPENAI_STD, CLIPConfig, ConfigError, Interpolation, PreprocessConfig
from ..text.vocab import END_OF_WORD, EOT_TOKEN, SOT_TOKEN, load_vocab
from .formats import CheckpointError
from .native import config_text

PREPROCESSOR_NAME = "preprocessor_config.json"
VOCAB_NAME = "vocab.json"
MERGES_NAME = "merges.txt"
TOKENIZER_CONFIG_NAME = "tokenizer_config.json"
SPECIAL_TOKENS_NAME = "special_tokens_map.json"
TOKENIZER_NAME = "tokenizer.json"
TOKENIZER_FILES = (VOCAB_NAME, MERGES_NAME, TOKENIZER_CONFIG_NAME, SPECIAL_TOKENS_NAME, TOKENIZER_NAME)

HF_BOS, HF_EOS = "<|startoftext|>", "<|endoftext|>"
CLIP_VOCAB_SIZE = 49408
MERGES_HEADER = "#version: 0.2"
# transformers' CLIPTokenizer pre-tokenizer: OpenAI's regex, with the two special tokens as whole words.
_HF_SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""

# PIL.Image.Resampling values, as transformers stores `resample`.
PIL_RESAMPLE: dict[Interpolation, int] = {"nearest": 0, "bilinear": 2, "bicubic": 3}
_PIL_NAMES = {1: "LANCZOS", 4: "BOX", 5: "HAMMING"}


# ---------------------------------------------------------------------------------------------- image: write


def preprocessor_to_hf(cfg: CLIPConfig) -> dict[str, Any]:
    """A `CLIPImageProcessor` config (preprocessor_config.json as a dict) equivalent to `cfg.preprocess`.

    The output side is the vision tower's `image_size` (which `CLIPConfig` keeps `preprocess.size` equal to):
    that is what the exported CLIPModel takes.
    """
    pre = cfg.preprocess
    side = cfg.vision.image_size
    mode = pre.resize_mode
    if mode == "longest":
        warnings.warn(
            "preprocess.resize_mode='longest' (fit inside, pad) cannot be expressed by transformers' "
            f"CLIPImageProcessor; {PREPROCESSOR_NAME} resizes the shortest side and centre-crops instead, so "
            "transformers will see non-square images cropped rather than padded",
            stacklevel=3,
        )
    crop = {"height": side, "width": side}
    return {
        "image_processor_type": "CLIPImageProcessor",
        "processor_class": "CLIPProcessor",
        "do_convert_rgb": True,
        "do_resize": True,
        # "squash" resizes both sides to the target; the others resize the shortest side, then crop.
        "size": dict(crop) if mode == "squash" else {"shortest_edge": side},
        "resample": PIL_RESAMPLE[pre.interpolation],
        "do_center_crop": mode != "squash",
        "crop_size": crop,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(pre.mean),
        "image_std": list(pre.std),
    }


def write_preprocessor_config(cfg: CLIPConfig, folder: str | os.PathLike) -> Path:
    """Write the model's preprocessing as HF's preprocessor_config.json in `folder`; return its path."""
    path = Path(folder) / PREPROCESSOR_NAME
    atomic_write_bytes(path, (json.dumps(preprocessor_to_hf(cfg), indent=2, sort_keys=True) + "\n").encode())
    return path


# ---------------------------------------------------------------------------------------------- image: read


def _bad(where: str, message: str) -> CheckpointError:
    return CheckpointError(f"{where}: {message}")


def _side(value: Any, where: str, key: str) -> dict[str, int]:
    """A size entry as a dict: an int means {"shortest_edge": n} for `size`, a square for `crop_size`."""
    if type(value) is int:
        return {"shortest_edge": value} if key == "size" else {"height": value, "width": value}
    if not isinstance(value, Mapping) or not value:
        raise _bad(where, f"{key}={value!r} must be an int or an object with shortest_edge or height/width")
    unknown = sorted(set(value) - {"shortest_edge", "longest_edge", "height", "width"})
    if unknown:
        raise _bad(where, f"{key} has unknown key(s) {unknown}; expected shortest_edge or height/width")
    for k, v in value.items():
        if v is not None and (type(v) is not int or v <= 0):
            raise _bad(where, f"{key}.{k}={v!r} is not a positive int")
    out = {k: v for k, v in value.items() if v is not None}
    if "longest_edge" in out:
        raise _bad(where, f"{key}.longest_edge is not supported (clipforge's models take square inputs)")
    if ("height" in out) != ("width" in out):
        raise _bad(where, f"{key}={value!r} needs both height and width")
    return out


def _square(entry: dict[str, int], where: str, key: str) -> int:
    if entry["height"] != entry["width"]:
        raise _bad(where, f"{key}={entry} is not square; clipforge's models take square images")
    return entry["height"]


def _triple(value: Any, where: str, key: str) -> tuple[float, float, float]:
    values = [value] * 3 if isinstance(value, (int, float)) and not isinstance(value, bool) else value
    ok = isinstance(values, (list, tuple)) and len(values) == 3
    if not ok or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise _bad(where, f"{key}={value!r} must be a number or a list of three numbers (RGB)")
    return tuple(float(v) for v in values)


def _flag(data: Mapping[str, Any], key: str, where: str) -> bool:
    value = data.get(key, True)  # CLIPImageProcessor's defaults are all True
    if not isinstance(value, bool):
        raise _bad(where, f"{key}={value!r} must be true or false")
    return value


def _interpolation(value: Any, where: str) -> Interpolation:
    if type(value) is not int:
        raise _bad(where, f"resample={value!r} must be a PIL resampling filter number (0-5)")
    for name, number in PIL_RESAMPLE.items():
        if number == value:
            return name
    if value in _PIL_NAMES:
        warnings.warn(
            f"{where}: resample={value} ({_PIL_NAMES[value]}) is not one of clipforge's filters; using bicubic",
            stacklevel=4,
        )
        return "bicubic"
    raise _bad(where, f"resample={value} is not a PIL resampling filter (0-5)")


def preprocess_from_hf(data: Mapping[str, Any], image_size: int, where: str = PREPROCESSOR_NAME) -> PreprocessConfig:
    """A `PreprocessConfig` for a `CLIPImageProcessor` config (preprocessor_config.json as a dict).

    `image_size` is the model's input side, used for sizes the file leaves out. Settings clipforge cannot
    reproduce exactly (resizing to one size and cropping to a smaller one, no resize at all) give a warning
    naming what clipforge does instead; values of the wrong type are a `CheckpointError` naming the field.
    """
    if not isinstance(data, Mapping):
        raise _bad(where, f"must be a JSON object, got {type(data).__name__}")
    if isinstance(data.get("image_processor"), Mapping):  # transformers 5's processor_config.json nesting
        data = data["image_processor"]
    do_resize, do_crop = _flag(data, "do_resize", where), _flag(data, "do_center_crop", where)
    size = _side(data.get("size", {"shortest_edge": image_size}), where, "size")
    crop = _square(_side(data.get("crop_size", image_size), where, "crop_size"), where, "crop_size")

    if "shortest_edge" in size:
        mode, side = "shortest", crop if do_crop else size["shortest_edge"]
        if not do_crop:
            warnings.warn(
                f"{where}: do_center_crop is false with size.shortest_edge, which gives non-square images; "
                "clipforge centre-crops them to a square",
                stacklevel=3,
            )
        elif size["shortest_edge"] != crop and do_resize:
            warnings.warn(
                f"{where}: resizes the shortest side to {size['shortest_edge']} then crops {crop}; clipforge "
                f"resizes the shortest side to {crop} directly, so the crop covers more of the image",
                stacklevel=3,
            )
    else:
        side = _square(size, where, "size")
        mode = "squash"
        if do_crop and crop != side:
            mode, side = "shortest", crop
            warnings.warn(
                f"{where}: resizes to {size['height']}x{size['width']} then crops {crop}; clipforge resizes the "
                f"shortest side to {crop} and centre-crops instead",
                stacklevel=3,
            )
    if not do_resize:
        warnings.warn(
            f"{where}: do_resize is false; clipforge always resizes, here to {side} ({mode} mode)", stacklevel=3
        )
    if side != image_size:
        warnings.warn(
            f"{where}: produces {side}x{side} images but the model takes {image_size}x{image_size} "
            f"(vision.image_size); clipforge preprocesses to {image_size}, the size the model takes",
            stacklevel=3,
        )
        side = image_size

    rescale = data.get("rescale_factor", 1 / 255) if _flag(data, "do_rescale", where) else 1.0
    if isinstance(rescale, bool) or not isinstance(rescale, (int, float)) or not rescale > 0:
        raise _bad(where, f"rescale_factor={rescale!r} must be a positive number")
    if _flag(data, "do_normalize", where):
        mean = _triple(data.get("image_mean", OPENAI_MEAN), where, "image_mean")
        std = _triple(data.get("image_std", OPENAI_STD), where, "image_std")
    else:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    if not all(s > 0 and math.isfinite(s) for s in std):
        raise _bad(where, f"image_std={list(std)} must be positive")
    # (x * r - m) / s == (x / 255 - M) / S with M = m / (255 r), S = s / (255 r); exact when r = 1/255.
    scale = 1.0 if math.isclose(rescale * 255, 1.0, rel_tol=1e-12) else 255 * rescale
    try:
        return PreprocessConfig(
            size=side,
            mean=tuple(m / scale for m in mean),
            std=tuple(s / scale for s in std),
            interpolation=_interpolation(data.get("resample", PIL_RESAMPLE["bicubic"]), where),
            resize_mode=mode,
        )
    except ConfigError as exc:  # pragma: no cover - every field is checked above
        raise _bad(where, str(exc)) from exc


def read_preprocessor_config(folder: str | os.PathLike, image_size: int) -> PreprocessConfig:
    """The folder's preprocessor_config.json as a `PreprocessConfig`; clipforge's default when it has none."""
    path = Path(folder) / PREPROCESSOR_NAME
    if not path.exists():  # one that exists but is no regular file (a FIFO) is refused below, naming it
        return PreprocessConfig(size=image_size)
    try:  # safeio: a FIFO, a device or a huge file is a CheckpointError naming it (read_text would block)
        data = json.loads(config_text(path))
    except CheckpointError:
        raise
    except ValueError as exc:  # invalid JSON, or bytes that are not UTF-8
        raise CheckpointError(f"{path} is not valid JSON: {exc}; fix or delete it (defaults apply without it)") from exc
    return preprocess_from_hf(data, image_size, where=str(path))


# ---------------------------------------------------------------------------------------------- tokenizer


def hf_vocab() -> dict[str, int]:
    """clipforge's token -> id map with the special tokens spelled as transformers spells them."""
    rename = {SOT_TOKEN: HF_BOS, EOT_TOKEN: HF_EOS}
    return {rename.get(token, token): i for token, i in load_vocab().encoder.items()}


def _merges_text() -> str:
    return "\n".join([MERGES_HEADER, *(" ".join(pair) for pair in load_vocab().merges)]) + "\n"


def build_hf_tokenizer(vocab: Mapping[str, int] | None = None) -> Tokenizer:
    """The `tokenizers.Tokenizer` transformers' CLIPTokenizer builds from vocab.json + merges.txt.

    Mirrors transformers `models/clip/tokenization_clip.py` (v5): BPE with the `</w>` suffix, NFC + whitespace
    + lowercase normalisation, the CLIP regex split then byte-level mapping, start/end tokens added around
    each text.
    """
    vocab = dict(vocab if vocab is not None else hf_vocab())
    tokenizer = Tokenizer(
        models.BPE(
            vocab=vocab,
            merges=list(load_vocab().merges),
            dropout=None,
            continuing_subword_prefix="",
            end_of_word_suffix=END_OF_WORD,
            fuse_unk=False,
            unk_token=HF_EOS,
        )
    )
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_HF_SPLIT), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in (HF_BOS, HF_EOS)])
    tokenizer.post_processor = processors.RobertaProcessing(
        (HF_EOS, vocab[HF_EOS]), (HF_BOS, vocab[HF_BOS]), trim_offsets=False, add_prefix_space=False
    )
    return tokenizer


def tokenizer_files(context_length: int) -> dict[str, bytes]:
    """File name -> contents of the tokenizer files for a CLIP text tower with `context_length` positions."""
    specials = {"bos_token": HF_BOS, "eos_token": HF_EOS, "unk_token": HF_EOS, "pad_token": HF_EOS}
    tokenizer_config = {
        **specials,
        "tokenizer_class": "CLIPTokenizer",
        "processor_class": "CLIPProcessor",
        "model_max_length": context_length,
        "do_lower_case": True,
        "errors": "replace",
        "add_prefix_space": False,
    }
    vocab = hf_vocab()
    dump = lambda obj: (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode()  # noqa: E731
    return {
        VOCAB_NAME: (json.dumps(vocab, ensure_ascii=False) + "\n").encode(),
        MERGES_NAME: _merges_text().encode(),
        TOKENIZER_CONFIG_NAME: dump(tokenizer_config),
        SPECIAL_TOKENS_NAME: dump(specials),
        TOKENIZER_NAME: build_hf_tokenizer(vocab).to_str().encode(),
    }


def write_tokenizer_files(cfg: CLIPConfig, folder: str | os.PathLike) -> list[Path]:
    """Write the tokenizer files for `cfg`'s text tower; none (with a warning) if it does not use CLIP's BPE."""
    if cfg.text.vocab_size != CLIP_VOCAB_SIZE:
        warnings.warn(
            f"text.vocab_size={cfg.text.vocab_size} is not CLIP's BPE ({CLIP_VOCAB_SIZE} tokens), the only "
            "tokenizer clipforge ships; no tokenizer files written, so CLIPProcessor/pipeline need one added",
            stacklevel=3,
        )
        return []
    written = []
    for name, data in tokenizer_files(cfg.text.context_length).items():
        atomic_write_bytes(Path(folder) / name, data)
        written.append(Path(folder) / name)
    return written


def write_processor_files(cfg: CLIPConfig, folder: str | os.PathLike) -> list[Path]:
    """preprocessor_config.json plus the tokenizer files: what transformers' CLIPProcessor loads."""
    return [write_preprocessor_config(cfg, folder), *write_tokenizer_files(cfg, folder)]
