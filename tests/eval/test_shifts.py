"""Distribution shifts of evaluation sets: exact, deterministic pixels, and their own feature-cache entries."""

import numpy as np
import pytest
import torch

from clipforge.eval.datasets.base import ArrayImages, ClassificationSet, fingerprint
from clipforge.eval.features import encode_images
from clipforge.eval.shifts import ShiftedView, list_shifts, shift_dataset
from clipforge.eval.tasks import SubsetView
from clipforge.factory import get_preprocess


def _set(n: int = 12, size: int = 20) -> ClassificationSet:
    rng = np.random.default_rng(3)
    array = rng.integers(0, 256, size=(n, size, size + 4, 3), dtype=np.uint8)  # not square: rotation shows
    return ClassificationSet(
        name="toy",
        split="test",
        classnames=("a", "b", "c"),
        templates=("a photo of {}.",),
        labels=tuple(i % 3 for i in range(n)),
        fingerprint=fingerprint("toy", "test", "/toy", [str(i) for i in range(n)]),
        images=ArrayImages(array, "toy"),
    )


def _pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int64)


def test_the_documented_shifts_are_registered():
    assert list_shifts() == ["invert", "rotate90", "noise", "blur", "lowcontrast"]


def test_invert_and_rotate90_are_exact():
    clean = _set()
    inverted, rotated = shift_dataset(clean, "invert"), shift_dataset(clean, "rotate90")
    for i in range(len(clean)):
        x = _pixels(clean.load(i))
        assert np.array_equal(_pixels(inverted.load(i)), 255 - x)
        assert np.array_equal(_pixels(rotated.load(i)), np.rot90(x))
    assert _pixels(rotated.load(0)).shape == (24, 20, 3)


def test_noise_is_seeded_per_image_and_has_the_documented_size():
    clean = _set()
    noisy = shift_dataset(clean, "noise")
    again = shift_dataset(_set(), "noise")
    diffs = []
    for i in range(len(clean)):
        a, b = _pixels(noisy.load(i)), _pixels(again.load(i))
        assert np.array_equal(a, b), "noise must be the same every run"
        assert np.array_equal(a, _pixels(noisy.load(i)))
        diffs.append(a - _pixels(clean.load(i)))
    assert not np.array_equal(diffs[0], diffs[1]), "each image has its own noise"
    # Clipping at 0/255 shrinks it a little; unclipped, sigma is 0.12 * 255 = 30.6.
    assert 20 < np.concatenate([d.ravel() for d in diffs]).std() < 32


def test_noise_follows_the_underlying_image_through_a_subset():
    clean = _set()
    subset = SubsetView(clean, 5, seed=1)
    shifted_subset = shift_dataset(subset, "noise")
    shifted_all = shift_dataset(clean, "noise")
    for i, row in enumerate(subset.rows):
        assert np.array_equal(_pixels(shifted_subset.load(i)), _pixels(shifted_all.load(row)))


def test_blur_and_lowcontrast_change_pixels_as_documented():
    clean = _set()
    x = _pixels(clean.load(0))
    low = _pixels(shift_dataset(clean, "lowcontrast").load(0))
    assert np.abs(low - np.rint(x.mean() + 0.3 * (x - x.mean()))).max() <= 1
    assert low.std() == pytest.approx(0.3 * x.std(), rel=0.05)
    blurred = _pixels(shift_dataset(clean, "blur").load(0))
    assert blurred.shape == x.shape and blurred.std() < 0.8 * x.std()  # noise images lose their high frequencies
    assert abs(blurred.mean() - x.mean()) < 5


def test_a_shifted_view_keeps_the_protocol_and_names_the_shift():
    clean = _set()
    view = shift_dataset(clean, "invert")
    assert isinstance(view, ShiftedView)
    assert (view.name, view.split) == ("toy", "test+invert")
    assert (view.labels, view.classnames, view.templates) == (clean.labels, clean.classnames, clean.templates)
    assert view.fingerprint != clean.fingerprint and "invert" in view.fingerprint
    assert shift_dataset(clean, None) is clean
    with pytest.raises(ValueError, match="unknown distribution shift 'sepia'.*invert"):
        shift_dataset(clean, "sepia")


def test_each_shift_gets_its_own_cached_features(tiny_model, tmp_path):
    """The cache key follows the shift: a shifted set is never served the clean set's cached features."""
    preprocess = get_preprocess(tiny_model)
    clean = _set()
    fresh = {}
    for name in [None, *list_shifts()]:
        fresh[name] = encode_images(tiny_model, shift_dataset(clean, name), preprocess, progress=False).features
    first = {}
    for name in [None, *list_shifts()]:  # one cache folder for all: clean first, so a mix-up would serve clean
        got = encode_images(tiny_model, shift_dataset(clean, name), preprocess, cache_dir=tmp_path, progress=False)
        assert not got.cache_hit, f"{name}: served another set's cached features"
        first[name] = got.features
    assert len(list(tmp_path.glob("*.safetensors"))) == 1 + len(list_shifts())
    for name in [None, *list_shifts()]:
        hit = encode_images(tiny_model, shift_dataset(clean, name), preprocess, cache_dir=tmp_path, progress=False)
        assert hit.cache_hit and torch.equal(hit.features, first[name])
        assert torch.allclose(first[name], fresh[name], atol=1e-5 * fresh[name].abs().max().item())
        if name is not None:
            assert not torch.allclose(first[name], fresh[None], atol=1e-3), f"{name} did not change the features"


def test_fashion_mnist_loader_takes_a_shift():
    from clipforge.eval.datasets import DatasetNotFound, load_eval_dataset

    try:
        clean = load_eval_dataset("fashion_mnist", split="test")
    except DatasetNotFound:
        pytest.skip("Fashion-MNIST is not installed (apt install dataset-fashion-mnist)")
    inverted = load_eval_dataset("fashion_mnist", split="test", shift="invert")
    assert inverted.fingerprint == clean.fingerprint + ":shift=invert" and len(inverted) == len(clean)
    assert np.array_equal(_pixels(inverted.load(7)), 255 - _pixels(clean.load(7)))
    with pytest.raises(ValueError, match="unknown distribution shift"):
        load_eval_dataset("fashion_mnist", split="test", shift="upside_down")
