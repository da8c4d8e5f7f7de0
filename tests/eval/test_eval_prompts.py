"""Zero-shot class-weight variants: template files, CuPL descriptions, CHiLS hierarchies (known answers)."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import clipforge
from clipforge.eval.prompts import (
    build_hierarchy,
    class_weights_from_descriptions,
    hierarchical_predict,
    load_class_descriptions,
    load_templates_file,
)
from clipforge.zeroshot import build_class_weights


class TableModel(nn.Module):
    """A stand-in CLIP: each text maps to a fixed vector (as in tests/zeroshot/test_classifier.py)."""

    def __init__(self, vectors: dict[str, list[float]]):
        super().__init__()
        self.texts = list(vectors)
        self.vectors = torch.tensor([vectors[t] for t in self.texts])
        self.logit_scale = nn.Parameter(torch.tensor(0.0))

    def tokenizer(self, texts):
        return torch.tensor([[self.texts.index(t)] for t in texts])

    def encode_text(self, tokens, normalize=False):
        out = self.vectors[tokens[:, 0]]
        return F.normalize(out, dim=-1) if normalize else out


def test_templates_file_reuses_the_zeroshot_reader(tmp_path):
    path = tmp_path / "simple"  # named like a built-in set: the file must still win
    path.write_text("# my prompts\na photo of a {}.\n\n  a sketch of a {}.  \n")
    assert load_templates_file(path) == ["a photo of a {}.", "a sketch of a {}."]
    with pytest.raises(FileNotFoundError):
        load_templates_file(tmp_path / "missing.txt")
    (tmp_path / "bad.txt").write_text("no slot\n")
    with pytest.raises(ValueError, match="exactly one"):
        load_templates_file(tmp_path / "bad.txt")


def test_load_class_descriptions_validates(tmp_path):
    good = tmp_path / "cupl.json"
    good.write_text(json.dumps({"cat": ["A cat has whiskers. ", "A small feline."], "dog": ["A loyal dog."]}))
    assert load_class_descriptions(good) == {"cat": ["A cat has whiskers.", "A small feline."], "dog": ["A loyal dog."]}
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"cat": []}))
    with pytest.raises(ValueError, match="non-empty list"):
        load_class_descriptions(bad)


def test_description_weights_are_the_renormalised_mean_of_unit_embeddings():
    vectors = {
        "Whiskers and fur {x}.": [4.0, 0.0, 0.0],  # braces in a description are text, not a slot
        "A small feline.": [0.0, 0.5, 0.0],
        "A loyal dog.": [0.0, 0.0, 3.0],
        "a photo of a cat.": [0.0, 0.0, 1.0],
        "a photo of a dog.": [0.0, 2.0, 0.0],
    }
    model = TableModel(vectors)
    descriptions = {"cat": ["Whiskers and fur {x}.", "A small feline."], "dog": ["A loyal dog."]}
    weights = class_weights_from_descriptions(model, model.tokenizer, ["cat", "dog"], descriptions)
    s = 1 / math.sqrt(2)
    torch.testing.assert_close(weights, torch.tensor([[s, 0.0], [s, 0.0], [0.0, 1.0]]))

    # With templates, every text weighs the same: cat = (1, 1, 1) / sqrt(3), dog = (0, 1, 1) / sqrt(2).
    both = class_weights_from_descriptions(model, model.tokenizer, ["cat", "dog"], descriptions, ["a photo of a {}."])
    t = 1 / math.sqrt(3)
    torch.testing.assert_close(both, torch.tensor([[t, 0.0], [t, s], [t, s]]))
    with pytest.raises(ValueError, match="no descriptions"):
        class_weights_from_descriptions(model, model.tokenizer, ["cat", "bird"], descriptions)


def test_descriptions_with_a_tiny_clip_match_single_template_weights():
    torch.manual_seed(0)
    model = clipforge.create_model("tiny-vit").eval()
    tokenizer = clipforge.get_tokenizer(model)
    descriptions = {"cat": ["a photo of a cat."], "dog": ["a photo of a dog.", "a dog on grass."]}
    weights = class_weights_from_descriptions(model, tokenizer, ["cat", "dog"], descriptions)
    assert weights.shape == (model.embed_dim, 2)
    torch.testing.assert_close(weights.norm(dim=0), torch.ones(2))
    # One description equal to the templated prompt gives exactly the template-ensemble weight.
    reference = build_class_weights(model, tokenizer, ["cat"], ["a photo of a {}."])
    torch.testing.assert_close(weights[:, :1], reference, atol=1e-5, rtol=1e-5)


def test_build_hierarchy_orders_parents_and_lets_a_leaf_parent_stand_for_itself():
    subs, sub_to_parent, parents = build_hierarchy({"dog": ["beagle", "husky"], "cat": [], "car": ["taxi"]})
    assert subs == ["beagle", "husky", "cat", "taxi"]
    assert sub_to_parent.tolist() == [0, 0, 1, 2] and sub_to_parent.dtype == torch.long
    assert parents == ["dog", "cat", "car"]


def test_subclass_evidence_flips_the_parent_prediction():
    _, sub_to_parent, _ = build_hierarchy({"dog": ["beagle", "husky", "poodle"], "wolf": ["grey wolf"]})
    parent_logits = torch.tensor([[0.0, 1.0]])  # parents alone: "wolf"
    assert parent_logits.argmax(dim=1).tolist() == [1]
    # Subclasses: a beagle is the best match, so both rules answer "dog".
    logits = torch.log(torch.tensor([[0.4, 0.2, 0.1, 0.3]]))
    assert hierarchical_predict(logits, sub_to_parent, 2, mode="max").tolist() == [0]
    assert hierarchical_predict(logits, sub_to_parent, 2, mode="sum").tolist() == [0]  # 0.7 vs 0.3
    # The single best subclass is the grey wolf, but the three dog breeds together outweigh it.
    logits = torch.log(torch.tensor([[0.25, 0.2, 0.15, 0.4]]))
    assert hierarchical_predict(logits, sub_to_parent, 2, mode="max").tolist() == [1]  # grey wolf is best
    assert hierarchical_predict(logits, sub_to_parent, 2, mode="sum").tolist() == [0]  # 0.6 vs 0.4
    # CHiLS reweighting: p(sub) * p(parent); a confident parent score wins back both rules.
    strong_wolf = torch.tensor([[0.0, 2.0]])  # p(wolf) = 0.88
    assert hierarchical_predict(logits, sub_to_parent, 2, mode="sum", parent_logits=strong_wolf).tolist() == [1]
    strong_dog = torch.tensor([[2.0, 0.0]])
    assert hierarchical_predict(logits, sub_to_parent, 2, mode="max", parent_logits=strong_dog).tolist() == [0]


def test_hierarchical_predict_validates():
    with pytest.raises(ValueError, match="mode"):
        hierarchical_predict(torch.zeros(1, 2), torch.tensor([0, 1]), 2, mode="mean")
    with pytest.raises(ValueError, match="sub_to_parent"):
        hierarchical_predict(torch.zeros(1, 2), torch.tensor([0, 2]), 2)
