"""The feature cache misses whenever the features would differ (issue 8, parts 2 and 17).

Keyed on file names only, the cache returned the old accuracy and skip count after a folder's images were
rewritten; keyed without the preprocessing, the transform and the autocast dtype, it served features computed
under another mean/std, resize mode or precision. Each test changes one of these and expects a miss.
"""

import dataclasses
import os
import warnings

import numpy as np
import pytest
import torch

import clipforge
from clipforge.eval.datasets import load_eval_dataset
from clipforge.eval.datasets.base import ArrayImages, ClassificationSet
from clipforge.eval.features import encode_images
from clipforge.image import EvalTransform
from clipforge.models.config import PreprocessConfig
from support.noise_images import write_noise_folder, write_noise_image


def _encode(model, dataset, cache, transform=None, **kwargs):
    transform = transform or clipforge.get_preprocess(model)
    return encode_images(model, dataset, transform, cache_dir=cache, progress=False, **kwargs)


@pytest.fixture
def folder(tmp_path):
    paths = write_noise_folder(tmp_path / "imgs", classes=2, per_class=3)
    return tmp_path / "imgs", paths


def test_rewriting_one_image_under_the_same_name_misses(tmp_path, tiny_model, folder):
    root, paths = folder
    cache = tmp_path / "cache"
    first = _encode(tiny_model, load_eval_dataset("folder", str(root)), cache)
    assert not first.cache_hit
    assert _encode(tiny_model, load_eval_dataset("folder", str(root)), cache).cache_hit

    write_noise_image(paths[2], seed=999)  # new pixels, same name
    changed = _encode(tiny_model, load_eval_dataset("folder", str(root)), cache)
    assert not changed.cache_hit
    assert not torch.equal(changed.features[2], first.features[2])
    torch.testing.assert_close(changed.features[[0, 1, 3]], first.features[[0, 1, 3]], rtol=0, atol=0)

    paths[4].write_bytes(b"not an image any more")  # the stale-cache bug also kept the old skip count
    broken = _encode(tiny_model, load_eval_dataset("folder", str(root)), cache)
    assert not broken.cache_hit and list(broken.skipped) == [4]


def test_touching_a_file_misses(tmp_path, tiny_model, folder):
    root, paths = folder
    cache = tmp_path / "cache"
    _encode(tiny_model, load_eval_dataset("folder", str(root)), cache)
    stat = paths[0].stat()
    os.utime(paths[0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # mtime only, same bytes
    assert not _encode(tiny_model, load_eval_dataset("folder", str(root)), cache).cache_hit


def test_same_size_rewrite_with_restored_mtime_misses_through_the_content_hash(tmp_path, tiny_model, folder):
    root, paths = folder
    cache = tmp_path / "cache"
    _encode(tiny_model, load_eval_dataset("folder", str(root)), cache)
    _encode(tiny_model, load_eval_dataset("folder", str(root)), cache, hash_contents=False)
    stat = paths[1].stat()
    data = bytearray(paths[1].read_bytes())
    data[-20] ^= 0xFF  # same size; what `cp -p` or rsync of a changed file with a preserved mtime leaves
    paths[1].write_bytes(bytes(data))
    os.utime(paths[1], ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert paths[1].stat().st_size == stat.st_size
    # Small sets hash their bytes by default ("auto"), so the rewrite is seen...
    assert not _encode(tiny_model, load_eval_dataset("folder", str(root)), cache).cache_hit
    # ... while size + mtime alone (hash_contents=False, the default for large sets) cannot see it.
    assert _encode(tiny_model, load_eval_dataset("folder", str(root)), cache, hash_contents=False).cache_hit


def test_an_in_memory_array_set_misses_when_one_pixel_changes(tmp_path, tiny_model):
    array = np.random.default_rng(0).integers(0, 256, size=(6, 32, 32, 3), dtype=np.uint8)

    def dataset(arr):
        images = ArrayImages(arr, "mem")
        return ClassificationSet("mem", "test", ("a", "b"), ("{}",), (0, 1, 0, 1, 0, 1), "mem-fp", images)

    cache = tmp_path / "cache"
    _encode(tiny_model, dataset(array), cache)
    assert _encode(tiny_model, dataset(array.copy()), cache).cache_hit
    changed = array.copy()
    changed[3, 5, 5, 0] ^= 0xFF
    assert not _encode(tiny_model, dataset(changed), cache).cache_hit


def test_mean_std_resize_mode_and_model_preprocess_each_miss(tmp_path, tiny_model, folder):
    root, _ = folder
    cache = tmp_path / "cache"
    dataset = load_eval_dataset("folder", str(root))
    base_cfg = tiny_model.config.preprocess
    _encode(tiny_model, dataset, cache, EvalTransform(base_cfg))
    assert _encode(tiny_model, dataset, cache, EvalTransform(base_cfg)).cache_hit
    other_norm = dataclasses.replace(base_cfg, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    assert not _encode(tiny_model, dataset, cache, EvalTransform(other_norm)).cache_hit
    other_resize = dataclasses.replace(base_cfg, resize_mode="squash")
    assert not _encode(tiny_model, dataset, cache, EvalTransform(other_resize)).cache_hit
    assert _encode(tiny_model, dataset, cache, EvalTransform(base_cfg)).cache_hit

    # The model's own preprocessing config is part of the key, even when the transform passed and the weights
    # hash given by the caller (EvalContext computes it once per run) are the same.
    _encode(tiny_model, dataset, cache, EvalTransform(base_cfg), model_hash="same-weights")
    model = clipforge.create_model("tiny-vit")
    model.load_state_dict(tiny_model.state_dict())
    model.config = dataclasses.replace(model.config, preprocess=PreprocessConfig(size=32, interpolation="bilinear"))
    assert not _encode(model, dataset, cache, EvalTransform(base_cfg), model_hash="same-weights").cache_hit


def test_fp32_and_bf16_features_have_separate_entries(tmp_path, tiny_model, folder):
    root, _ = folder
    cache = tmp_path / "cache"
    dataset = load_eval_dataset("folder", str(root))
    fp32 = _encode(tiny_model, dataset, cache)
    bf16 = _encode(tiny_model, dataset, cache, dtype=torch.bfloat16)
    assert not bf16.cache_hit and len(list(cache.glob("*.safetensors"))) == 2
    assert not torch.equal(fp32.features, bf16.features)  # bf16 rounding is visible in the features
    assert _encode(tiny_model, dataset, cache, dtype=torch.bfloat16).cache_hit
    assert _encode(tiny_model, dataset, cache, dtype=torch.float32).cache_hit  # float32 autocast is no autocast
    torch.testing.assert_close(_encode(tiny_model, dataset, cache).features, fp32.features, rtol=0, atol=0)


def test_a_transform_without_a_description_is_not_cached(tmp_path, tiny_model, folder):
    root, _ = folder
    cache = tmp_path / "cache"
    preprocess = clipforge.get_preprocess(tiny_model)
    with pytest.warns(UserWarning, match="not cached"):
        _encode(tiny_model, load_eval_dataset("folder", str(root)), cache, lambda image: preprocess(image))
    assert not cache.exists() or not list(cache.iterdir())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _encode(tiny_model, load_eval_dataset("folder", str(root)), cache)
