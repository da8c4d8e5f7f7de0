"""The public API promised in the README: names exist and the factories follow the model they are given."""

import pytest
import torch
from PIL import Image

import clipforge


def test_public_names():
    for name in [
        "list_models",
        "list_pretrained",
        "create_model",
        "load_model",
        "save_model",
        "get_tokenizer",
        "get_preprocess",
        "ZeroShotClassifier",
        "convert",
        "load_image",
    ]:
        assert callable(getattr(clipforge, name)), name
    assert ("ViT-B-32-quickgelu", "openai") in clipforge.list_pretrained()
    assert len([tag for _, tag in clipforge.list_pretrained() if tag == "openai"]) == 9


def test_get_preprocess_follows_the_model_config():
    image = Image.new("RGB", (500, 300), (200, 10, 10))
    assert clipforge.get_preprocess("ViT-L-14-336")(image).shape == (3, 336, 336)
    model = clipforge.create_model("tiny-vit", preprocess={"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]})
    pixels = clipforge.get_preprocess(model)(image)
    assert pixels.shape == (3, 32, 32)
    torch.testing.assert_close(pixels[:, 0, 0], torch.tensor([200 / 255 * 2 - 1, 10 / 255 * 2 - 1, 10 / 255 * 2 - 1]))


def test_get_tokenizer_follows_the_model_context_length():
    model = clipforge.create_model("tiny-vit", text={"context_length": 16})
    tokens = clipforge.get_tokenizer(model)(["a photo of a cat"])
    assert tokens.shape == (1, 16)
    assert model.encode_text(tokens).shape == (1, model.embed_dim)
    with pytest.raises(ValueError, match="vocab_size"):
        clipforge.get_tokenizer(clipforge.create_model("tiny-vit", text={"vocab_size": 1000}))


def test_forward_returns_the_documented_dict():
    torch.manual_seed(0)
    model = clipforge.create_model("tiny-siglip")
    out = model(torch.randn(2, 3, 32, 32), clipforge.get_tokenizer(model)(["a", "b", "c"]))
    assert set(out.keys()) == {"image_features", "text_features", "logit_scale", "logit_bias"}
    logits, logits_t = model.get_logits(torch.randn(2, 3, 32, 32), clipforge.get_tokenizer(model)(["a", "b", "c"]))
    assert logits.shape == (2, 3) and logits_t.shape == (3, 2)
