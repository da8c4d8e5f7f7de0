"""Adapter.logits takes images too: a bound adapter encodes a (N, 3, H, W) batch, PIL images or image paths the
way `encode_labelled` caches features, so scoring images equals scoring their cached features."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

import clipforge
import clipforge.adapt as adapt
from clipforge.adapt.data import folder_features
from clipforge.image import preprocess_batch
from support.noise_images import write_noise_folder
from support.tolerance import assert_close_rel

REL = 1e-4  # two batchings of the same tower: float rounding only
FAST = {"tip": {}, "prolip": {"epochs": 3, "lr": 1e-3}, "cocoop": {"epochs": 1, "batch_size": 4}}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return clipforge.create_model("tiny-vit").eval()


@pytest.fixture(scope="module")
def folder(tmp_path_factory, model):
    """Noise images in 3 class folders, their paths in dataset order, and their cached features (projected and
    pre-projection), computed by adapt.data as a user's feature cache would be."""
    root = tmp_path_factory.mktemp("inputs")
    paths = write_noise_folder(root, classes=3, per_class=3)
    data = folder_features(model, root, pre_features=True)
    return paths, data


@pytest.mark.parametrize("method", sorted(FAST))
def test_logits_of_images_equal_logits_of_their_cached_features(model, folder, method):
    paths, data = folder
    adapter = adapt.fit(method, model, data, **FAST[method])  # fit binds the model it was given
    assert adapter.model is model
    cached = data.pre_features if method == "prolip" else data.features  # what this method scores
    expected = adapter.logits(cached)  # (N, C)
    pixels = preprocess_batch(paths, clipforge.get_preprocess(model))  # (N, 3, S, S)
    with Image.open(paths[0]) as image:
        pil = image.convert("RGB")
    assert_close_rel(adapter.logits([str(p) for p in paths]), expected, REL, f"{method} paths")
    assert_close_rel(adapter.logits(pixels), expected, REL, f"{method} pixel batch")
    assert_close_rel(adapter.logits(pil), expected[:1], REL, f"{method} one PIL image")
    by_path = adapter.logits(paths)
    assert torch.equal(adapter.predict(paths), by_path.argmax(dim=-1))


def test_loaded_adapter_needs_bind_for_images_not_for_features(model, folder, tmp_path):
    paths, data = folder
    tip = adapt.fit("tip", model, data)
    loaded = adapt.load(tip.save(tmp_path / "tip"))
    assert loaded.model is None
    assert_close_rel(loaded.logits(data.features), tip.logits(data.features), REL, "features need no model")
    with pytest.raises(ValueError, match=r"bound to no model: call adapter\.bind\(model\)"):
        loaded.predict(paths)
    assert loaded.bind(model) is loaded
    assert_close_rel(loaded.logits(paths), tip.logits(data.features), REL, "after bind")
    assert not any(name.startswith("model") or name.startswith("_bound") for name in loaded.state_dict())


def test_bad_inputs_are_named(model, folder):
    _, data = folder
    tip = adapt.fit("tip", model, data)
    with pytest.raises(ValueError, match=r"\(N, 32\), got shape \(2, 7\)"):
        tip.logits(torch.zeros(2, 7))  # features of the wrong width: both numbers named
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\).*\(2, 3, 4\)"):
        tip.logits(torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="float"):
        tip.logits(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(TypeError, match="image path"):
        tip.logits(42)
    with pytest.raises(TypeError, match="int"):
        tip.logits(["a.png", 3])
    with pytest.raises(TypeError, match="CLIP model"):
        tip.bind(object())
