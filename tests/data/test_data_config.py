"""Config validation, per-sample seeding of custom transforms, and the Tux Paint source."""

import numpy as np
import pytest
import torch
from PIL import Image

from clipforge.data import DataConfig, SourceConfig, TrainData, load_tuxpaint_pairs
from clipforge.data.builtins import TUXPAINT_ROOT
from clipforge.data.seeding import derive_seed, derive_seeds
from clipforge.image import load_image
from clipforge.models.config import ConfigError


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"kind": "zip"}, "not one of"),
        ({"kind": "csv"}, "needs a path"),
        ({"kind": "wds", "path": "x.tar", "weight": 0}, "weight must be positive"),
        ({"kind": "fashion_mnist", "templates": ("no placeholder",)}, "exactly one"),
        ({"kind": "fashion_mnist", "split": "val"}, "split"),
        ({"kind": "csv", "path": "x.csv", "separator": "::"}, "one character"),
    ],
)
def test_source_config_is_validated(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        SourceConfig(**kwargs)


def test_data_config_is_validated():
    source = SourceConfig("wds", "x.tar")
    with pytest.raises(ConfigError, match="epoch_samples"):
        DataConfig(sources=(source,), resampled=True)
    with pytest.raises(ConfigError, match="batch_size"):
        DataConfig(sources=(source,), batch_size=0)
    with pytest.raises(ConfigError, match="at least one"):
        DataConfig(sources=())
    with pytest.raises(ConfigError, match="max_bad_fraction"):
        DataConfig(sources=(source,), max_bad_fraction=2)
    assert DataConfig(sources=[source]).sources == (source,)


def test_csv_with_unknown_columns_lists_the_columns(tmp_path, eval_transform, tokenizer):
    path = tmp_path / "x.csv"
    path.write_text("image,text\na.png,hello\n")
    with pytest.raises(ConfigError, match=r"\['image', 'text'\]"):
        TrainData(DataConfig(sources=(SourceConfig("csv", str(path)),)), eval_transform, tokenizer)
    data = TrainData(
        DataConfig(
            sources=(SourceConfig("csv", str(path), image_column="image", caption_column="text"),),
            batch_size=1,
            max_bad_fraction=1.0,
        ),
        eval_transform,
        tokenizer,
    )
    assert data.batches_per_epoch() == 1


def test_too_small_a_dataset_is_an_error(tmp_path, synth, eval_transform, tokenizer):
    source = SourceConfig("folder", str(synth.write_folder(tmp_path, 3)))
    with pytest.raises(ConfigError, match="no batch"):
        TrainData(DataConfig(sources=(source,), batch_size=2), eval_transform, tokenizer, world_size=2)


def test_seeds_are_pure_functions_of_their_parts():
    assert derive_seed(1, 2, 3) == derive_seed(1, 2, 3) != derive_seed(1, 3, 2)
    assert derive_seeds((4, 5), torch.arange(6).numpy()).tolist() == [derive_seed(4, 5, i) for i in range(6)]


def test_custom_transforms_are_seeded_per_sample_without_touching_the_global_rng(tmp_path, synth, tokenizer):
    """A transform that draws from torch's global RNG still gives the same batches on resume."""

    def noisy(image):
        pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1)[:, :8, :8]  # (3, 8, 8) uint8
        return pixels / 255 + torch.rand(3, 8, 8)

    cfg = DataConfig(sources=(SourceConfig("folder", str(synth.write_folder(tmp_path, 12))),), batch_size=3)
    data = TrainData(cfg, noisy, tokenizer)
    torch.manual_seed(0)
    state = torch.get_rng_state()
    full = list(data.epoch(0))
    assert torch.equal(torch.get_rng_state(), state)
    synth.assert_same_batches(list(data.epoch(0, start_batch=2)), full[2:])


def _transparent_corner(path):
    with Image.open(path) as image:
        return image.mode == "RGBA" and image.getpixel((0, 0))[3] == 0


def test_tuxpaint_stamps(eval_transform, tokenizer):
    try:
        pairs = load_tuxpaint_pairs()
    except FileNotFoundError as exc:
        assert "apt-get install -y --no-install-recommends tuxpaint-stamps-default" in str(exc)
        pytest.skip(str(exc))
    assert len(pairs) > 700
    path, caption, coarse = pairs[0]
    assert (
        path.startswith(TUXPAINT_ROOT)
        and caption
        and coarse
        in {
            "animals",
            "clothes",
            "food",
            "hobbies",
            "household",
            "medical",
            "military",
            "naturalforces",
            "people",
            "plants",
            "seasonal",
            "space",
            "sports",
            "symbols",
            "town",
            "vehicles",
        }
    )
    assert all(c.strip() == c and c for _, c, _ in pairs)
    transparent = next(p for p, _, _ in pairs if _transparent_corner(p))
    assert load_image(transparent).getpixel((0, 0)) == (255, 255, 255)  # composited on white
    cfg = DataConfig(sources=(SourceConfig("tuxpaint"),), batch_size=8, epoch_samples=16)
    batches = list(TrainData(cfg, eval_transform, tokenizer).epoch(0))
    assert len(batches) == 2 and batches[0].images.shape == (8, 3, 12, 12)
