"""The open_clip migration layer (clipforge/compat.py and the open_clip-named keywords and methods).

Where open_clip can compute the same thing on clipforge's model (zero-shot weights, lock groups, model
configs, template data), the test compares with open_clip itself.
"""

import pytest
import torch
from PIL import Image

import clipforge
from clipforge.weights.openclip import config_to_openclip

open_clip = pytest.importorskip("open_clip")


def _scale(ref: torch.Tensor) -> float:
    return float(ref.abs().max())


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return clipforge.create_model("tiny-vit")


@pytest.fixture(scope="module")
def saved(tiny, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny") / "model"
    clipforge.save_model(tiny, folder, format="openclip")
    return folder


def test_names_and_data_match_open_clip():
    assert clipforge.IMAGENET_CLASSNAMES == open_clip.IMAGENET_CLASSNAMES
    for ours, theirs in (
        (clipforge.OPENAI_IMAGENET_TEMPLATES, open_clip.OPENAI_IMAGENET_TEMPLATES),
        (clipforge.SIMPLE_IMAGENET_TEMPLATES, open_clip.SIMPLE_IMAGENET_TEMPLATES),
    ):
        assert isinstance(ours, tuple) and all(callable(t) for t in ours)
        assert [t("red panda") for t in ours] == [t("red panda") for t in theirs]
    torch.testing.assert_close(clipforge.tokenize(["a dog", "a cat"]), open_clip.tokenize(["a dog", "a cat"]))
    assert clipforge.tokenize("a dog", context_length=10).shape == (1, 10)
    assert sorted(clipforge.list_pretrained_tags_by_model("ViT-L-14")) == sorted(
        open_clip.list_pretrained_tags_by_model("ViT-L-14")
    )


@pytest.mark.parametrize("name", ["ViT-B-32", "ViT-L-14-quickgelu", "RN50"])
def test_get_model_config_is_open_clips_dict(name):
    ours, theirs = clipforge.get_model_config(name), open_clip.get_model_config(name)
    assert ours["embed_dim"] == theirs["embed_dim"]
    assert bool(ours.get("quick_gelu")) == bool(theirs.get("quick_gelu"))
    for key in ("image_size", "layers", "width", "patch_size"):
        assert ours["vision_cfg"][key] == theirs["vision_cfg"].get(key), key
    for key in ("context_length", "vocab_size", "width", "heads", "layers"):
        assert ours["text_cfg"][key] == theirs["text_cfg"][key], key
    assert clipforge.get_model_config("no-such-model") is None


def test_build_zero_shot_classifier_matches_open_clip(tiny):
    tokenizer = clipforge.get_tokenizer(tiny)
    classes = ["cat", "dog", "car", "tree", "boat"]
    templates = clipforge.SIMPLE_IMAGENET_TEMPLATES
    ours = clipforge.build_zero_shot_classifier(tiny, tokenizer, classes, templates, num_classes_per_batch=2)
    theirs = open_clip.build_zero_shot_classifier(tiny, tokenizer, classes, templates, num_classes_per_batch=2)
    assert ours.shape == (tiny.embed_dim, len(classes))
    torch.testing.assert_close(ours, theirs.float(), rtol=0, atol=1e-5 * _scale(theirs))
    as_strings = clipforge.build_zero_shot_classifier(
        tiny, tokenizer, classes, clipforge.get_templates("simple"), num_classes_per_batch=None, use_tqdm=True
    )
    torch.testing.assert_close(as_strings, ours, rtol=0, atol=1e-5 * _scale(ours))
    with pytest.raises(ValueError, match="no class names"):
        clipforge.build_zero_shot_classifier(tiny, tokenizer, [], templates)


def _openclip_twin(model):
    """open_clip's CLIP built from the same config, for comparing which parameters each lock leaves trainable."""
    cfg = config_to_openclip(model.config)["model_cfg"]
    return open_clip.CLIP(**cfg)


def _trainable(model, prefix_map=None):
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    if prefix_map is not None:
        from clipforge.weights.openclip import openclip_to_clipforge_keys

        names = set(openclip_to_clipforge_keys(dict.fromkeys(names, torch.zeros(1))))
    return names


@pytest.mark.parametrize("groups", [0, 1, 2, 3, 4])
def test_lock_towers_leave_the_same_parameters_trainable_as_open_clip(groups):
    ours = clipforge.create_model("tiny-vit")
    theirs = _openclip_twin(ours)
    assert set(dict(ours.named_parameters())) == _trainable(theirs, prefix_map=True)  # same names before locking
    ours.lock_image_tower(unlocked_groups=groups)
    theirs.lock_image_tower(unlocked_groups=groups)
    ours.lock_text_tower(unlocked_layers=groups)
    theirs.lock_text_tower(unlocked_layers=groups)
    assert _trainable(ours) == _trainable(theirs, prefix_map=True)
    assert "logit_scale" in _trainable(ours)


def test_lock_options_and_frozen_batch_norm_statistics():
    torch.manual_seed(0)
    model = clipforge.create_model("tiny-rn")
    with pytest.raises(ValueError, match="freeze_layer_norm=False"):
        model.lock_text_tower(freeze_layer_norm=False)
    with pytest.raises(ValueError, match="non-negative int"):
        model.lock_image_tower(unlocked_groups=-1)
    model.lock_image_tower(unlocked_groups=0, freeze_bn_stats=True)
    assert not any(p.requires_grad for p in model.visual.parameters())
    before = {k: v.clone() for k, v in model.visual.state_dict().items()}
    images = torch.randn(4, 3, 64, 64)
    model.train()
    train_out = model.encode_image(images)
    assert all(torch.equal(before[k], v) for k, v in model.visual.state_dict().items())  # running stats unchanged
    model.eval()
    eval_out = model.encode_image(images)
    torch.testing.assert_close(train_out, eval_out, rtol=0, atol=1e-5 * _scale(eval_out))


def test_create_model_and_transforms_options(tiny, saved):
    model, train_tf, eval_tf = clipforge.create_model_and_transforms(
        "tiny-vit",
        pretrained=str(saved),
        image_mean=(0.5, 0.5, 0.5),
        image_std=[0.25, 0.25, 0.25],
        image_resize_mode="squash",
        aug_cfg={"scale": (0.5, 1.0), "color_jitter": (0.4, 0.4, 0.4, 0.1), "color_jitter_prob": 0.8},
        output_dict=True,
        force_custom_text=True,
    )
    assert model.config.preprocess.mean == (0.5, 0.5, 0.5) and model.config.preprocess.resize_mode == "squash"
    assert eval_tf.cfg.mean == (0.5, 0.5, 0.5) and train_tf.cfg.std == (0.25, 0.25, 0.25)
    assert train_tf.aug.scale == (0.5, 1.0)
    assert train_tf.aug.color_jitter_prob == 0.8
    for key, value in tiny.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    assert eval_tf(Image.new("RGB", (50, 40))).shape == (3, 32, 32)
    _, preprocess = clipforge.create_model_from_pretrained("tiny-vit", pretrained=str(saved))
    assert preprocess(Image.new("RGB", (50, 40))).shape == (3, 32, 32)
    alone = clipforge.create_model_from_pretrained("tiny-vit", str(saved), return_transform=False)
    assert isinstance(alone, clipforge.CLIP)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"jit": True}, "torch.compile"),
        ({"pretrained_image": True}, "whole CLIP checkpoint"),
        ({"aug_cfg": {"use_timm": True}}, "timm"),
        ({"aug_cfg": {"re_prob": 0.25}}, "timm"),
        ({"precision": "fp8"}, "precision"),
    ],
)
def test_unsupported_open_clip_options_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        clipforge.create_model_and_transforms("tiny-vit", **kwargs)


def test_create_model_from_pretrained_needs_weights():
    with pytest.raises(ValueError, match="needs weights"):
        clipforge.create_model_from_pretrained("tiny-vit")


def test_precision_and_force_quick_gelu(tiny, saved):
    cases = {"fp32": torch.float32, "amp": torch.float32, "amp_bf16": torch.float32, "bf16": torch.bfloat16}
    cases.update({"pure_bf16": torch.bfloat16, "fp16": torch.float16, "pure_fp16": torch.float16})
    for precision, dtype in cases.items():
        model = clipforge.create_model("tiny-vit", pretrained=str(saved), precision=precision)
        assert {p.dtype for p in model.parameters()} == {dtype}, precision
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = tiny.encode_image(images)
        low = clipforge.create_model("tiny-vit", pretrained=str(saved), precision="bf16").encode_image(images)
    torch.testing.assert_close(low.float(), ref, rtol=0, atol=0.05 * _scale(ref))
    with pytest.raises(ValueError, match="disagree"):
        clipforge.create_model("tiny-vit", precision="bf16", dtype=torch.float16)
    quick = clipforge.create_model("tiny-vit", pretrained=str(saved), force_quick_gelu=True)
    assert quick.config.vision.act == quick.config.text.act == "quick_gelu"
    with torch.no_grad():
        assert not torch.allclose(quick.encode_image(images), ref)  # same weights, other activation
    model, _, _ = clipforge.create_model_and_transforms("tiny-vit", force_quick_gelu=True, precision="pure_bf16")
    assert model.config.text.act == "quick_gelu" and model.logit_scale.dtype == torch.bfloat16


def test_force_image_size_and_context_length_with_weights(tiny, saved):
    model, _, preprocess = clipforge.create_model_and_transforms(
        "tiny-vit", pretrained=str(saved), force_image_size=48, force_context_length=16
    )
    assert model.image_size == 48 and model.context_length == 16
    assert preprocess(Image.new("RGB", (60, 50))).shape == (3, 48, 48)
    images = torch.randn(2, 3, 48, 48)
    tokens16 = clipforge.get_tokenizer(model)(["a photo of a cat", "a dog"])
    assert tokens16.shape == (2, 16)
    with torch.no_grad():
        # The original model resamples its position grid at run time for 48 px input: the same numbers.
        tiny.set_position_interpolation(True)  # it refuses another size unless asked
        ref = tiny.encode_image(images)
        tiny.set_position_interpolation(False)
        torch.testing.assert_close(model.encode_image(images), ref, rtol=0, atol=1e-5 * _scale(ref))
        ref = tiny.encode_text(clipforge.get_tokenizer(tiny)(["a photo of a cat", "a dog"]))
        torch.testing.assert_close(model.encode_text(tokens16), ref, rtol=0, atol=1e-5 * _scale(ref))
    with pytest.raises(ValueError, match="only shortening"):
        clipforge.create_model_and_transforms("tiny-vit", pretrained=str(saved), force_context_length=100)
    fresh = clipforge.create_model_and_transforms("tiny-vit", force_image_size=64)[0]
    assert fresh.image_size == 64 and fresh.config.preprocess.size == 64


def test_load_weights_false_keeps_the_tags_architecture_and_preprocessing():
    model = clipforge.create_model_and_transforms("ViT-L-14", pretrained="laion2b_s32b_b82k", load_weights=False)[0]
    assert model.config.preprocess.mean == (0.5, 0.5, 0.5)  # the tag's normalisation, no download
    assert clipforge.get_model_config("ViT-L-14")["vision_cfg"]["width"] == model.config.vision.width


def test_local_dir_names_for_models_and_tokenizers(tiny, saved, tmp_path):
    short = clipforge.create_model("tiny-vit", text={"context_length": 12})
    clipforge.save_model(short, tmp_path / "short", format="openclip")
    tokenizer = clipforge.get_tokenizer(f"local-dir:{tmp_path / 'short'}")
    assert tokenizer(["a cat"]).shape == (1, 12)
    model = clipforge.create_model(f"local-dir:{saved}")
    for key, value in tiny.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    with pytest.warns(UserWarning, match="ignored"):
        clipforge.create_model(f"local-dir:{saved}", pretrained="openai")
    assert clipforge.get_model_config(f"local-dir:{tmp_path / 'short'}")["text_cfg"]["context_length"] == 12
