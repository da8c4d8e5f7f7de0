"""adapt.data: eval datasets and class folders -> LabelledFeatures, with seeded, cached augmented views."""

from __future__ import annotations

import pytest
import torch

import clipforge
from clipforge.adapt.data import encode_labelled, encode_labelled_set, folder_features
from clipforge.eval.datasets.folder import load_folder
from clipforge.eval.tasks import EvalContext
from support.noise_images import write_noise_folder, write_noise_image
from support.tolerance import assert_close_rel


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return clipforge.create_model("tiny-vit").eval()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("folder")
    write_noise_folder(root, classes=3, per_class=4)
    return root


def test_encode_labelled_matches_the_eval_encoder(tiny_model, folder):
    dataset = load_folder(str(folder), "train")
    data = encode_labelled(tiny_model, dataset)
    assert data.classnames == ("class 0", "class 1", "class 2")
    assert data.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert data.features.shape[0] == 12
    assert data.views is None
    assert_close_rel(data.features.norm(dim=-1), torch.ones(12), rel=1e-5)
    image = clipforge.get_preprocess(tiny_model)(dataset.load(5)).unsqueeze(0)  # (1, 3, S, S)
    with torch.no_grad():
        direct = tiny_model.encode_image(image, normalize=True)[0]
    assert_close_rel(data.features[5], direct, rel=1e-4)


def test_views_are_seeded_per_image_cached_and_differ_from_the_plain_view(tiny_model, folder, tmp_path):
    ctx = EvalContext("tiny", cache_dir=tmp_path / "cache", batch_size=5, progress=False)
    first = encode_labelled_set(tiny_model, load_folder(str(folder), "train"), views=2, seed=1, ctx=ctx)
    assert first.encoded_again == 3  # plain + 2 views
    views = first.features.views
    assert views.shape == (2, 12, first.features.dim)
    assert not torch.allclose(views[0], views[1])  # two views are two augmentations
    assert not torch.allclose(views[0], first.features.features)
    # Batch size changes the batching, not the per-image random stream: same views, now from the cache.
    ctx_other = EvalContext("tiny", cache_dir=tmp_path / "cache", batch_size=3, progress=False)
    again = encode_labelled_set(tiny_model, load_folder(str(folder), "train"), views=2, seed=1, ctx=ctx_other)
    assert again.encoded_again == 0
    torch.testing.assert_close(again.features.views, views)
    fresh = encode_labelled(tiny_model, load_folder(str(folder), "train"), views=2, seed=1, batch_size=7)
    assert_close_rel(fresh.views, views, rel=1e-4)
    other_seed = encode_labelled(tiny_model, load_folder(str(folder), "train"), views=1, seed=2)
    assert not torch.allclose(other_seed.views[0], views[0])


def test_folder_features_skips_unreadable_images_in_every_field(tiny_model, tmp_path):
    write_noise_folder(tmp_path, classes=2, per_class=3)
    (tmp_path / "class_1" / "broken.png").write_bytes(b"not a png")
    write_noise_image(tmp_path / "class_1" / "zz.png", seed=7)
    data = folder_features(tiny_model, tmp_path, views=1)
    assert len(data) == 7 and data.views.shape[:2] == (1, 7)
    assert data.labels.tolist() == [0, 0, 0, 1, 1, 1, 1]
    dataset = load_folder(str(tmp_path), "train")
    encoded = encode_labelled_set(tiny_model, dataset)
    assert [dataset.images.paths[i].endswith("broken.png") for i in encoded.skipped] == [True]
    assert len(encoded.indices) == 7 and set(encoded.indices).isdisjoint(encoded.skipped)


def test_bad_inputs_are_named(tiny_model, folder):
    with pytest.raises(ValueError, match="views must be >= 0"):
        encode_labelled(tiny_model, load_folder(str(folder), "train"), views=-1)
    from clipforge.eval.datasets.base import RetrievalSet

    captions = RetrievalSet("caps", "test", (("a",),), "f", images=lambda i: None)
    with pytest.raises(ValueError, match="labelled classification set"):
        encode_labelled(tiny_model, captions)


def test_pre_features_come_from_the_same_pass_and_have_their_own_cache_entry(tiny_model, folder, tmp_path):
    dataset = load_folder(str(folder), "train")
    ctx = EvalContext("tiny", cache_dir=tmp_path / "cache", batch_size=5, progress=False)
    plain = encode_labelled_set(tiny_model, dataset, ctx=ctx)
    both = encode_labelled_set(tiny_model, dataset, ctx=ctx, pre_features=True)
    assert both.encoded_again == 1  # a projected-only entry must not be read as one holding pre-features
    data = both.features
    assert plain.features.pre_features is None
    assert data.pre_features.shape == (12, tiny_model.image_projection.shape[0])
    assert_close_rel(data.features, plain.features.features, rel=1e-4)  # projecting pre == the full tower
    image = clipforge.get_preprocess(tiny_model)(dataset.load(5)).unsqueeze(0)  # (1, 3, S, S)
    with torch.no_grad():
        direct = tiny_model.encode_image(image, project=False)[0]  # (P,)
        reprojected = torch.nn.functional.normalize(tiny_model.project_image(data.pre_features), dim=-1)
    assert_close_rel(data.pre_features[5], direct, rel=1e-4)
    assert_close_rel(reprojected, data.features, rel=1e-5)  # the features ARE the projected pre-features
    again = encode_labelled_set(tiny_model, dataset, ctx=ctx, pre_features=True)
    assert again.encoded_again == 0  # now from its own cache entry
    torch.testing.assert_close(again.features.pre_features, data.pre_features)
    plain_again = encode_labelled_set(tiny_model, dataset, ctx=ctx)
    assert plain_again.encoded_again == 0 and plain_again.features.pre_features is None  # still its own entry


def test_pre_features_of_views_align_with_the_views(tiny_model, folder):
    data = folder_features(tiny_model, folder, views=2, seed=3, pre_features=True)
    assert data.views.shape[:2] == (2, 12) and data.pre_features.shape == (2, 12, tiny_model.image_projection.shape[0])
    with torch.no_grad():
        projected = torch.nn.functional.normalize(tiny_model.project_image(data.pre_features), dim=-1)  # (V, N, D)
    assert_close_rel(projected, data.views, rel=1e-5)
    plain = encode_labelled(tiny_model, load_folder(str(folder), "train"), views=2, seed=3)
    assert_close_rel(data.views, plain.views, rel=1e-4)  # same seeded augmentations with or without pre-features
