"""`save_model(..., format="hf")` writes a folder that transformers' CLIPProcessor and pipeline use as clipforge does.

Checked against transformers itself: token ids, pixel values (both image processor backends), pipeline scores,
and the preprocessor_config.json read back into a PreprocessConfig (weights/hf_processor.py).

Tolerances: transformers' PIL backend resizes with the same Pillow call as clipforge, so its pixels agree to float
rounding (1e-5 of the tensor's scale). Its default torchvision backend resizes a uint8 tensor with torch's
antialiased kernels, not Pillow's fixed-point ones: most pixels agree, some are one grey level off, and where
bicubic overshoots on sharp noise a few are up to 5 levels off (measured on these images: mean <= 0.3 level).
That backend is bounded at mean < 0.5 and max <= 8 grey levels. Pipeline scores are probabilities (scale 1):
1e-4, with PIL-backend pixels or an image that needs no resize.
"""

from __future__ import annotations

import dataclasses
import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

transformers = pytest.importorskip("transformers")

import clipforge  # noqa: E402
from clipforge.image.tensor import RESAMPLE, Normalizer  # noqa: E402
from clipforge.image.transforms import resized_size  # noqa: E402
from clipforge.models import PreprocessConfig  # noqa: E402
from clipforge.weights import hf_processor  # noqa: E402
from clipforge.weights.formats import CheckpointError  # noqa: E402

TEXTS = [
    "a photo of a cat",
    "Hello, World!! wow!?",
    "it's 2024 -- pi is 3.14159; don't panic",
    "  Multiple   spaces\tand\nnewlines  ",
    "café naïve résumé",
    "UPPER lower MiXeD 42nd",
    "word " * 100,  # truncated to the context length
]
CUSTOM = PreprocessConfig(size=32, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3), interpolation="bilinear")


def _model(seed: int = 0, **overrides) -> clipforge.CLIP:
    """tiny-vit moved off its init, with a large logit scale so zero-shot probabilities are far from uniform."""
    torch.manual_seed(seed)
    model = clipforge.create_model("tiny-vit", **overrides)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
        model.logit_scale.fill_(np.log(100.0))
    return model.eval()


def _image(width: int, height: int, seed: int = 0) -> Image.Image:
    """Smooth gradients plus noise: structure that survives resizing, detail that shows filter differences."""
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([255 * x / width, 255 * y / height, 128 + 100 * np.sin(x / 3.0 + y / 5.0)], axis=-1)
    noise = np.random.default_rng(seed).normal(0, 30, base.shape)
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8), "RGB")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = _model()
    folder = tmp_path_factory.mktemp("hf")
    clipforge.save_model(model, folder, format="hf")
    return model, folder


def test_export_writes_processor_and_tokenizer_files(exported):
    _, folder = exported
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["config.json", "model.safetensors", hf_processor.PREPROCESSOR_NAME, *hf_processor.TOKENIZER_FILES]
    )
    processor = transformers.CLIPProcessor.from_pretrained(folder)
    assert type(processor.image_processor).__name__ == "CLIPImageProcessor"
    assert type(processor.tokenizer).__name__ == "CLIPTokenizer"
    assert processor.tokenizer.model_max_length == 77
    assert processor.image_processor.crop_size == {"height": 32, "width": 32}
    config = json.loads((folder / hf_processor.PREPROCESSOR_NAME).read_text())
    assert config["size"] == {"shortest_edge": 32} and config["resample"] == 3 and config["do_center_crop"] is True


def _expected_hf_ids(cf_ids: torch.Tensor, eot: int = 49407) -> torch.Tensor:
    """clipforge pads with 0 after the end token, transformers with the end token itself."""
    after_end = (cf_ids == eot).long().cumsum(dim=1) - (cf_ids == eot).long() > 0  # (N, L) past the first eot
    return torch.where(after_end, torch.full_like(cf_ids, eot), cf_ids)


def test_tokenizer_gives_clipforge_ids(exported):
    model, folder = exported
    cf_ids = clipforge.get_tokenizer(model)(TEXTS)  # (N, 77)
    tokenizer = transformers.CLIPProcessor.from_pretrained(folder).tokenizer
    hf_ids = tokenizer(TEXTS, padding="max_length", truncation=True, max_length=77, return_tensors="pt")["input_ids"]
    assert torch.equal(hf_ids, _expected_hf_ids(cf_ids))
    unpadded = tokenizer(TEXTS[:3])["input_ids"]  # no padding: exactly clipforge's ids up to the end token
    assert [row for row in unpadded] == [row[: row.index(49407) + 1] for row in cf_ids[:3].tolist()]


def test_tokenizer_json_matches_what_transformers_builds_from_vocab_and_merges(exported, tmp_path):
    """Without tokenizer.json, transformers builds one from vocab.json + merges.txt: same ids, same pipeline."""
    _, folder = exported
    for name in (hf_processor.VOCAB_NAME, hf_processor.MERGES_NAME, hf_processor.TOKENIZER_CONFIG_NAME):
        (tmp_path / name).write_bytes((folder / name).read_bytes())
    built = transformers.CLIPTokenizer.from_pretrained(tmp_path)
    ours = transformers.CLIPTokenizer.from_pretrained(folder)
    assert built(TEXTS)["input_ids"] == ours(TEXTS)["input_ids"]
    theirs = json.loads(built.backend_tokenizer.to_str())
    mine = json.loads((folder / hf_processor.TOKENIZER_NAME).read_text())
    for part in ("normalizer", "pre_tokenizer", "post_processor", "decoder", "added_tokens"):
        assert mine[part] == theirs[part], part
    assert mine["model"]["vocab"] == theirs["model"]["vocab"]
    assert mine["model"]["merges"] == theirs["model"]["merges"]


def _hf_crop_reference(image: Image.Image, cfg: PreprocessConfig) -> torch.Tensor | None:
    """clipforge's pixels with transformers' crop offsets, where those differ from clipforge's; else None.

    transformers crops at int((side - size) / 2); clipforge, open_clip and torchvision at round((side - size) / 2)
    (halves to even), one pixel further when side - size is 3 mod 4.
    """
    if cfg.resize_mode != "shortest":
        return None
    width, height = resized_size(image.width, image.height, cfg.size, cfg.resize_mode)
    left, top = (width - cfg.size) // 2, (height - cfg.size) // 2
    if (left, top) == (round((width - cfg.size) / 2), round((height - cfg.size) / 2)):
        return None
    resized = image.resize((width, height), RESAMPLE[cfg.interpolation])
    return Normalizer(cfg.mean, cfg.std)(resized.crop((left, top, left + cfg.size, top + cfg.size)))


def _processor(folder, backend: str):
    return transformers.AutoImageProcessor.from_pretrained(folder, backend=backend)


@pytest.mark.parametrize(
    "preprocess",
    [
        None,  # tiny-vit's default: bicubic, shortest side + centre crop, OpenAI mean/std
        CUSTOM,
        dataclasses.replace(CUSTOM, resize_mode="squash", interpolation="bicubic"),
        dataclasses.replace(CUSTOM, interpolation="nearest"),
    ],
    ids=["default", "bilinear", "squash", "nearest"],
)
@pytest.mark.parametrize("size", [(57, 43), (40, 90), (32, 32), (20, 25), (61, 45)], ids=str)
def test_pixel_values_match_clipforge_preprocess(tmp_path, preprocess, size):
    overrides = {} if preprocess is None else {"preprocess": dataclasses.asdict(preprocess)}
    model = clipforge.create_model("tiny-vit", **overrides)
    clipforge.save_model(model, tmp_path, format="hf")
    image = _image(*size)
    ref = clipforge.get_preprocess(model)(image)  # (3, 32, 32)
    scale = ref.abs().max()
    shifted = _hf_crop_reference(image, model.config.preprocess)
    if shifted is not None:  # (61, 45): resized to 43 x 32, crop offset 5 in transformers, round(5.5) = 6 in clipforge
        assert not torch.allclose(shifted, ref)
        ref = shifted
    pil = _processor(tmp_path, "pil")(images=image, return_tensors="pt")["pixel_values"][0]
    torch.testing.assert_close(pil, ref, rtol=0, atol=1e-5 * scale)
    if model.config.preprocess.interpolation == "nearest":
        return  # torchvision's tensor nearest picks other source pixels than Pillow's: only the PIL backend matches
    tv = _processor(tmp_path, "torchvision")(images=image, return_tensors="pt")["pixel_values"][0]
    levels = (tv - ref).abs() * 255 * torch.tensor(model.config.preprocess.std).view(3, 1, 1)  # in 8-bit levels
    assert levels.mean() < 0.5 and levels.max() < 8.01, (levels.mean(), levels.max())


def test_pipeline_scores_match_clipforge_zero_shot(exported):
    model, folder = exported
    labels = ["cat", "dog", "red car", "a bowl of soup", "mountain"]
    image = _image(57, 43)
    classifier = clipforge.ZeroShotClassifier(
        model, clipforge.get_tokenizer(model), labels, templates=["This is a photo of {}."]
    )
    probs = classifier.predict(clipforge.get_preprocess(model)(image)[None])[0]  # (5,)
    assert probs.max() > 2 * probs.min()  # the test model separates the labels: a swap would show

    pil_pipe = transformers.pipeline(
        "zero-shot-image-classification", model=str(folder), image_processor=_processor(folder, "pil")
    )
    scores = {r["label"]: r["score"] for r in pil_pipe(image, candidate_labels=labels)}
    torch.testing.assert_close(torch.tensor([scores[label] for label in labels]), probs, rtol=0, atol=1e-4)

    default_pipe = transformers.pipeline("zero-shot-image-classification", model=str(folder))
    square = _image(32, 32)  # no resize: both backends see clipforge's pixels
    probs = classifier.predict(clipforge.get_preprocess(model)(square)[None])[0]
    scores = {r["label"]: r["score"] for r in default_pipe(square, candidate_labels=labels)}
    torch.testing.assert_close(torch.tensor([scores[label] for label in labels]), probs, rtol=0, atol=1e-4)


# ---------------------------------------------------------------------------------------------- reading back


@pytest.mark.parametrize(
    "preprocess",
    [CUSTOM, dataclasses.replace(CUSTOM, resize_mode="squash"), dataclasses.replace(CUSTOM, interpolation="nearest")],
    ids=["shortest", "squash", "nearest"],
)
def test_export_reads_back_its_preprocess(tmp_path, preprocess):
    model = _model(preprocess=dataclasses.asdict(preprocess))
    clipforge.save_model(model, tmp_path, format="hf")
    loaded = clipforge.load_model(tmp_path)
    got = loaded.config.preprocess
    assert (got.size, got.interpolation, got.resize_mode) == (
        preprocess.size,
        preprocess.interpolation,
        preprocess.resize_mode,
    )
    np.testing.assert_allclose(got.mean, preprocess.mean, rtol=1e-12)
    np.testing.assert_allclose(got.std, preprocess.std, rtol=1e-12)
    image = _image(50, 41)
    torch.testing.assert_close(clipforge.get_preprocess(loaded)(image), clipforge.get_preprocess(model)(image))


def test_folder_without_preprocessor_config_gets_defaults(exported, tmp_path):
    _, folder = exported
    for name in ("config.json", "model.safetensors"):
        (tmp_path / name).write_bytes((folder / name).read_bytes())
    assert clipforge.load_model(tmp_path).config.preprocess == PreprocessConfig(size=32)


def test_transformers_saved_image_processor_is_honoured(exported, tmp_path):
    """A config written by transformers itself (rescale and normalise settings folded into mean/std)."""
    _, folder = exported
    for name in ("config.json", "model.safetensors"):
        (tmp_path / name).write_bytes((folder / name).read_bytes())
    processor = transformers.CLIPImageProcessor(
        size={"shortest_edge": 32},
        crop_size=32,
        resample=2,
        rescale_factor=1 / 127.5,
        image_mean=[1.0, 0.9, 1.1],
        image_std=[0.5, 0.6, 0.7],
    )
    processor.save_pretrained(tmp_path)
    assert (tmp_path / hf_processor.PREPROCESSOR_NAME).is_file()
    loaded = clipforge.load_model(tmp_path)
    assert loaded.config.preprocess.interpolation == "bilinear"
    image = _image(57, 43)  # resized to 42 x 32: transformers and clipforge crop at the same offset
    ref = transformers.CLIPImageProcessorPil.from_pretrained(tmp_path)(images=image, return_tensors="pt")
    ref = ref["pixel_values"][0]
    torch.testing.assert_close(clipforge.get_preprocess(loaded)(image), ref, rtol=0, atol=1e-5 * ref.abs().max())


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({}, PreprocessConfig(size=32)),
        ({"size": 32, "crop_size": 32}, PreprocessConfig(size=32)),  # legacy int sizes
        (
            {"size": {"height": 32, "width": 32}, "do_center_crop": False},
            PreprocessConfig(size=32, resize_mode="squash"),
        ),
        (
            {"do_normalize": False, "resample": 0},
            PreprocessConfig(size=32, mean=(0, 0, 0), std=(1, 1, 1), interpolation="nearest"),
        ),
        (
            {"do_rescale": False, "image_mean": 127.5, "image_std": 127.5},
            PreprocessConfig(size=32, mean=(0.5,) * 3, std=(0.5,) * 3),
        ),
        # transformers 5's processor_config.json nests the image processor
        ({"image_processor": {"resample": 2}}, PreprocessConfig(size=32, interpolation="bilinear")),
    ],
)
def test_preprocess_from_hf_fields(data, expected):
    got = hf_processor.preprocess_from_hf(data, image_size=32)
    assert dataclasses.replace(got, mean=expected.mean, std=expected.std) == expected
    np.testing.assert_allclose(got.mean, expected.mean, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(got.std, expected.std, rtol=1e-12)


@pytest.mark.parametrize(
    ("data", "warning"),
    [
        ({"size": {"shortest_edge": 36}, "crop_size": 32}, "then crops 32"),
        ({"do_center_crop": False}, "non-square"),
        ({"do_resize": False}, "do_resize is false"),
        ({"resample": 1}, "LANCZOS"),
        ({"size": {"height": 40, "width": 40}, "crop_size": 32}, "resizes to 40x40 then crops 32"),
        # issue 8: the model's image size wins over a processor made for another size
        ({"size": 48, "crop_size": 48}, "produces 48x48 images but the model takes 32x32"),
    ],
)
def test_inexpressible_settings_warn(data, warning):
    with pytest.warns(UserWarning, match=warning):
        cfg = hf_processor.preprocess_from_hf(data, image_size=32)
    assert cfg.size == 32


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"size": {"height": 32, "width": 40}, "do_center_crop": False}, "not square"),
        ({"size": {"longest_edge": 32}}, "longest_edge"),
        ({"image_mean": [0.5, 0.5]}, "image_mean"),
        ({"image_std": [0.5, 0.0, 0.5]}, "image_std"),
        ({"resample": "bicubic"}, "resample"),
        ({"do_resize": "yes"}, "do_resize"),
        ({"rescale_factor": 0}, "rescale_factor"),
        ({"crop_size": {"height": -1, "width": -1}}, "crop_size.height"),
        ([1, 2], "JSON object"),
    ],
)
def test_bad_fields_raise_checkpoint_error_naming_them(data, field):
    with pytest.raises(CheckpointError, match=field):
        hf_processor.preprocess_from_hf(data, image_size=32, where="x/preprocessor_config.json")


def test_malformed_preprocessor_config_names_the_file(exported, tmp_path):
    _, folder = exported
    for name in ("config.json", "model.safetensors"):
        (tmp_path / name).write_bytes((folder / name).read_bytes())
    (tmp_path / hf_processor.PREPROCESSOR_NAME).write_text('{"size": {"shortest_edge": 32,}')
    with pytest.raises(CheckpointError, match=r"preprocessor_config\.json is not valid JSON"):
        clipforge.load_model(tmp_path)
    (tmp_path / hf_processor.PREPROCESSOR_NAME).write_text('{"image_mean": "red"}')
    with pytest.raises(CheckpointError, match=r"preprocessor_config\.json: image_mean='red'"):
        clipforge.load_model(tmp_path)


# ---------------------------------------------------------------------------------------------- what cannot be written


def test_longest_resize_mode_warns_and_writes_shortest(tmp_path):
    model = clipforge.create_model("tiny-vit", preprocess={"resize_mode": "longest", "size": 32})
    with pytest.warns(UserWarning, match="'longest'.*cannot be expressed"):
        clipforge.save_model(model, tmp_path, format="hf")
    assert json.loads((tmp_path / hf_processor.PREPROCESSOR_NAME).read_text())["size"] == {"shortest_edge": 32}


def test_preprocess_size_other_than_image_size_writes_the_image_size(tmp_path):
    """issue 8: a quickstart model had vision.image_size 28 and preprocess size 32; the config now follows the
    model's size (with a warning naming both), and so does the export."""
    with pytest.warns(UserWarning, match="preprocess.size=32 differs from vision.image_size=28"):
        model = clipforge.create_model("tiny-vit", vision={"image_size": 28, "patch_size": 7}, preprocess={"size": 32})
    assert model.config.preprocess.size == 28
    clipforge.save_model(model, tmp_path, format="hf")
    config = json.loads((tmp_path / hf_processor.PREPROCESSOR_NAME).read_text())
    assert config["size"] == {"shortest_edge": 28} and config["crop_size"] == {"height": 28, "width": 28}
    processor = transformers.CLIPProcessor.from_pretrained(tmp_path)
    pixels = processor(images=_image(50, 40), return_tensors="pt")["pixel_values"]
    assert pixels.shape == (1, 3, 28, 28)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert clipforge.load_model(tmp_path).config.preprocess.size == 28


def test_non_clip_vocabulary_writes_no_tokenizer(tmp_path):
    model = clipforge.create_model("tiny-vit", text={"vocab_size": 1000})
    with pytest.warns(UserWarning, match="no tokenizer files written"):
        clipforge.save_model(model, tmp_path, format="hf")
    assert not any((tmp_path / name).exists() for name in hf_processor.TOKENIZER_FILES)
    assert (tmp_path / hf_processor.PREPROCESSOR_NAME).is_file()
