"""issue 8 A: one source of truth for the input size (vision.image_size), and towers that refuse other sizes.

The quickstart model had vision.image_size 28 and a preprocess size of 32: every image lost 4 px to the
patch-7 convolution without a word. These tests pin the two halves of the fix: the preprocessing of a model
always produces `vision.image_size` (whatever path built or read the config), and a tower given another size
raises an error naming both sizes unless position interpolation was asked for explicitly.
"""

import json
import warnings

import pytest
import torch
from PIL import Image

import clipforge
from clipforge.models import CLIP, CLIPConfig, ConfigError, get_model_config
from clipforge.models.config import PreprocessConfig, VisionConfig
from clipforge.recipes import fashion_mnist
from clipforge.weights.loading import apply_overrides
from clipforge.weights.native import CONFIG_NAME
from support.tolerance import assert_close_rel

# ------------------------------------------------------------------------------------------- one source of truth


def _preprocessed_side(model_or_config) -> int:
    return clipforge.get_preprocess(model_or_config)(Image.new("RGB", (50, 40), "gray")).shape[-1]


def test_an_image_size_override_carries_into_the_preprocessing():
    """The issue's example: ViT-B-32 at 256 px kept a 224 px preprocess."""
    config = apply_overrides(get_model_config("ViT-B-32"), {"vision": {"image_size": 256}})
    assert config.preprocess.size == 256 and _preprocessed_side(config) == 256


def test_replace_vision_carries_its_image_size_into_the_preprocessing():
    config = get_model_config("tiny-vit").replace(preprocess=PreprocessConfig(size=32, mean=(0.5,) * 3))
    resized = config.replace(vision=VisionConfig(image_size=48, patch_size=8, width=64, layers=2, heads=4))
    assert resized.preprocess == PreprocessConfig(size=48, mean=(0.5,) * 3)  # only the size follows


def test_a_config_whose_preprocess_size_differs_is_refused():
    message = r"preprocess.size=32 differs from vision.image_size=28.*set vision.image_size"
    with pytest.raises(ConfigError, match=message):
        CLIPConfig(vision=VisionConfig(image_size=28, patch_size=7), preprocess=PreprocessConfig(size=32))


def test_saved_configs_store_the_size_once_and_round_trip():
    config = get_model_config("tiny-vit")
    data = config.to_dict()
    assert "size" not in data["preprocess"] and data["vision"]["image_size"] == 32
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert CLIPConfig.from_dict(data) == config
        data["preprocess"]["size"] = 32  # a file written before issue 8, sizes equal: read silently
        assert CLIPConfig.from_dict(data) == config


def test_an_old_checkpoint_with_another_preprocess_size_loads_at_the_model_size(tmp_path):
    """A quickstart model saved before the fix (28 px model, 32 px preprocess) still loads, with a warning naming
    both numbers, and preprocesses at the size it takes."""
    model = clipforge.create_model("tiny-vit", vision={"image_size": 28, "patch_size": 7})
    clipforge.save_model(model, tmp_path)
    path = tmp_path / CONFIG_NAME
    saved = json.loads(path.read_text())
    saved["model"]["preprocess"]["size"] = 32
    path.write_text(json.dumps(saved))
    with pytest.warns(UserWarning, match=r"preprocess.size=32 differs from vision.image_size=28"):
        loaded = clipforge.load_model(tmp_path)
    assert loaded.config.preprocess.size == 28 and _preprocessed_side(loaded) == 28
    with torch.no_grad():
        loaded.encode_image(clipforge.get_preprocess(loaded)(Image.new("RGB", (30, 30))).unsqueeze(0))


def test_the_quickstart_model_and_its_data_agree_on_the_size():
    """The Fashion-MNIST recipe's model takes 28 px, its preprocess and its batches are 28 px (native: no resize)."""
    spec = fashion_mnist.get_config().model
    model = clipforge.create_model(spec.name, **spec.overrides)
    assert model.image_size == model.config.preprocess.size == 28
    assert model.image_size % model.config.vision.patch_size == 0
    assert _preprocessed_side(model) == 28


# ------------------------------------------------------------------------------------ towers refuse other sizes


@pytest.mark.parametrize("side", [16, 36, 40])
def test_a_vit_refuses_images_of_another_size(side):
    model = CLIP(get_model_config("tiny-vit")).eval()  # 32 px, patch 8
    images = torch.randn(1, 3, side, side)
    message = rf"images are {side}x{side} but this model takes 32x32 \(vision.image_size\).*get_preprocess\(model\)"
    with pytest.raises(ValueError, match=message):
        model.encode_image(images)
    with pytest.raises(ValueError, match=message):
        model.visual.forward_tokens(images)


def test_a_vit_refuses_non_square_and_badly_shaped_batches():
    model = CLIP(get_model_config("tiny-vit")).eval()
    with pytest.raises(ValueError, match="images are 32x40 but this model takes 32x32"):
        model.encode_image(torch.randn(1, 3, 32, 40))
    with pytest.raises(ValueError, match=r"expected images shaped \(batch, 3, height, width\), got \(3, 32, 32\)"):
        model.encode_image(torch.randn(3, 32, 32))


def test_a_resnet_refuses_images_of_another_size_and_cannot_interpolate():
    model = CLIP(get_model_config("tiny-rn")).eval()
    side = model.image_size + 32
    with pytest.raises(ValueError, match=rf"images are {side}x{side} but this model takes"):
        model.encode_image(torch.randn(1, 3, side, side))
    with pytest.raises(ValueError, match="fixed position grid"):
        model.set_position_interpolation(True)
    model.set_position_interpolation(False)  # switching it off is always fine (training phases do)


def test_position_interpolation_is_explicit_and_needs_whole_patches():
    torch.manual_seed(0)
    model = CLIP(get_model_config("tiny-vit")).eval()
    model.set_position_interpolation(True)
    with torch.no_grad():
        assert model.encode_image(torch.randn(2, 3, 16, 16)).shape == (2, model.embed_dim)
        with pytest.raises(ValueError, match="images are 20x20, not a multiple of the patch size 8"):
            model.encode_image(torch.randn(1, 3, 20, 20))
    model.set_position_interpolation(False)
    with pytest.raises(ValueError, match="images are 16x16 but this model takes 32x32"):
        model.encode_image(torch.randn(2, 3, 16, 16))


def test_the_size_check_compiles_without_a_graph_break():
    """The check is plain int comparisons on the shape: torch.compile traces it as a guard (fullgraph works),
    and the compiled tower still refuses another size."""
    model = CLIP(get_model_config("tiny-vit")).eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        compiled = torch.compile(model.visual, backend="eager", fullgraph=True)
        assert_close_rel(compiled(images), model.visual(images), rel=1e-6)  # the same kernels, traced
        with pytest.raises(ValueError, match="images are 16x16 but this model takes 32x32"):
            torch.compile(model.visual, backend="eager")(torch.randn(2, 3, 16, 16))
