"""Zero-shot classifier: prompt ensembling on hand-built embeddings whose answer is known."""

import math

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

import clipforge
from clipforge.zeroshot import ZeroShotClassifier, build_class_weights, get_templates


class TableModel(nn.Module):
    """A stand-in CLIP: each prompt string and each 'image' maps to a fixed vector."""

    def __init__(self, prompt_vectors: dict[str, list[float]], logit_scale: float = 1.0):
        super().__init__()
        self.prompts = list(prompt_vectors)
        self.vectors = torch.tensor([prompt_vectors[p] for p in self.prompts])
        self.logit_scale = nn.Parameter(torch.tensor(math.log(logit_scale)))

    def tokenizer(self, texts):
        return torch.tensor([[self.prompts.index(t)] for t in texts])

    def encode_text(self, tokens, normalize=False):
        out = self.vectors[tokens[:, 0]]
        return F.normalize(out, dim=-1) if normalize else out

    def encode_image(self, images, normalize=False):
        return F.normalize(images, dim=-1) if normalize else images


def test_class_weight_is_mean_of_normalised_prompt_embeddings_renormalised():
    vectors = {
        "a cat.": [3.0, 0.0, 0.0],  # normalises to (1, 0, 0)
        "the cat!": [0.0, 0.5, 0.0],  # normalises to (0, 1, 0)
        "a dog.": [0.0, 0.0, 2.0],
        "the dog!": [0.0, 0.0, 7.0],
    }
    model = TableModel(vectors)
    weights = build_class_weights(model, model.tokenizer, ["cat", "dog"], ["a {}.", "the {}!"])
    s = 1 / math.sqrt(2)
    torch.testing.assert_close(weights, torch.tensor([[s, 0.0], [s, 0.0], [0.0, 1.0]]))


def test_predict_picks_the_nearest_class_with_softmax_of_scaled_cosines():
    vectors = {"a cat.": [1.0, 0.0], "a dog.": [0.0, 1.0]}
    model = TableModel(vectors, logit_scale=10.0)
    clf = ZeroShotClassifier(model, model.tokenizer, ["cat", "dog"], ["a {}."])
    images = torch.tensor([[2.0, 0.1], [0.0, 5.0], [1.0, 1.0]])
    probs = clf.predict(images)
    cos = F.normalize(images, dim=-1)
    torch.testing.assert_close(probs, (10.0 * cos).softmax(-1))
    assert probs.argmax(-1).tolist() == [0, 1, 0]  # a tie goes to the first class
    torch.testing.assert_close(probs[2], torch.tensor([0.5, 0.5]))
    assert clf.top_k(images[:1], k=2)[0][0][0] == "cat"


def test_templates_data_and_validation(tmp_path):
    assert len(get_templates("imagenet")) == 80
    assert len(get_templates("simple")) == 7
    assert get_templates("photo") == ["a photo of a {}."]
    good = tmp_path / "t.txt"
    good.write_text("# comment\na {} photo.\n\nart of {}.\n")
    assert get_templates(good) == ["a {} photo.", "art of {}."]
    bad = tmp_path / "bad.txt"
    bad.write_text("no placeholder here\n")
    with pytest.raises(ValueError, match="exactly one"):
        get_templates(bad)
    with pytest.raises(ValueError, match="not a built-in set"):
        get_templates("nonexistent-set")


def test_end_to_end_with_a_tiny_clip():
    torch.manual_seed(0)
    model = clipforge.create_model("tiny-vit")
    clf = ZeroShotClassifier(model, clipforge.get_tokenizer(model), ["cat", "dog", "car"], get_templates("simple"))
    assert clf.weights.shape == (model.embed_dim, 3)
    torch.testing.assert_close(clf.weights.norm(dim=0), torch.ones(3))
    probs = clf.predict(torch.randn(4, 3, 32, 32))
    assert probs.shape == (4, 3)
    torch.testing.assert_close(probs.sum(-1), torch.ones(4))


def test_callable_templates_and_template_set_names():
    vectors = {"a cat.": [3.0, 0, 0], "the cat!": [0, 0.5, 0], "a dog.": [0, 0, 2.0], "the dog!": [0, 0, 7.0]}
    model = TableModel(vectors)
    as_strings = build_class_weights(model, model.tokenizer, ["cat", "dog"], ["a {}.", "the {}!"])
    as_callables = build_class_weights(model, model.tokenizer, ["cat", "dog"], [lambda c: f"a {c}.", "the {}!".format])
    torch.testing.assert_close(as_callables, as_strings)
    with pytest.raises(ValueError, match="callable"):
        build_class_weights(model, model.tokenizer, ["cat"], [42])
    torch.manual_seed(0)
    tiny = clipforge.create_model("tiny-vit")
    tokenizer = clipforge.get_tokenizer(tiny)
    by_name = ZeroShotClassifier(tiny, tokenizer, ["cat", "dog"], "simple")
    assert by_name.templates == get_templates("simple")
    by_list = ZeroShotClassifier(tiny, tokenizer, ["cat", "dog"], get_templates("simple"))
    torch.testing.assert_close(by_name.weights, by_list.weights)
    assert ZeroShotClassifier(tiny, tokenizer, ["cat"], "a photo of a {}.").templates == ["a photo of a {}."]


def test_predict_accepts_pil_images_and_files(tmp_path):
    torch.manual_seed(0)
    tiny = clipforge.create_model("tiny-vit")
    clf = ZeroShotClassifier(tiny, clipforge.get_tokenizer(tiny), ["cat", "dog", "car"], "photo")
    images = [Image.new("RGB", (60, 40), (200, 30, 30)), Image.new("RGB", (40, 50), (10, 90, 220))]
    images[1].save(tmp_path / "blue.png")
    batch = torch.stack([clipforge.get_preprocess(tiny)(im) for im in images])  # (2, 3, 32, 32)
    ref = clf.predict(batch)
    scale = 1e-5 * float(ref.abs().max())
    torch.testing.assert_close(clf.predict([images[0], tmp_path / "blue.png"]), ref, rtol=0, atol=scale)
    torch.testing.assert_close(clf.predict(images[0]), ref[:1], rtol=0, atol=scale)
    torch.testing.assert_close(clf.predict(str(tmp_path / "blue.png")), ref[1:], rtol=0, atol=scale)
    assert clf.top_k(images[0], k=2)[0][0][0] in {"cat", "dog", "car"}
