"""Zero-shot and retrieval evaluation on a tiny random clipforge model, checked against hand computations."""

import pytest
import torch

import clipforge
from clipforge.eval import mean_per_class_recall, retrieval_evaluate, retrieval_recall, topk_accuracy, zeroshot_evaluate
from clipforge.zeroshot import ZeroShotClassifier

CLASSNAMES = ["cat", "dog", "car", "tree", "boat", "house", "bird"]
TEMPLATES = ["a photo of a {}.", "a drawing of a {}."]


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = clipforge.create_model("tiny-vit")
    images = torch.randn(24, 3, model.image_size, model.image_size)
    labels = torch.tensor([i % 6 for i in range(24)])  # class 6 ("bird") has no samples
    return model, clipforge.get_tokenizer(model), images, labels


def test_zeroshot_evaluate_equals_zeroshot_classifier_by_hand(tiny):
    model, tokenizer, images, labels = tiny
    model.eval()
    logits = ZeroShotClassifier(model, tokenizer, CLASSNAMES, TEMPLATES).logits(images)  # (N, C)
    expected = topk_accuracy(logits, labels)
    expected["mean_per_class_recall"] = mean_per_class_recall(logits, labels, len(CLASSNAMES))

    got = zeroshot_evaluate(model, tokenizer, images, labels, CLASSNAMES, TEMPLATES, batch_size=5)
    assert got == pytest.approx(expected, abs=1e-9)

    # The same images from a loader of (images, labels) batches.
    loader = [(images[i : i + 7], labels[i : i + 7]) for i in range(0, 24, 7)]
    assert zeroshot_evaluate(model, tokenizer, loader, None, CLASSNAMES, TEMPLATES) == pytest.approx(expected, abs=1e-9)

    # Labels set to the classifier's own argmax score 1.0 everywhere.
    argmax = logits.argmax(dim=1)
    perfect = zeroshot_evaluate(model, tokenizer, images, argmax, CLASSNAMES, TEMPLATES)
    assert perfect == pytest.approx({"top1": 1.0, "top5": 1.0, "mean_per_class_recall": 1.0})


def test_zeroshot_evaluate_restores_mode_and_autocasts(tiny):
    model, tokenizer, images, labels = tiny
    model.train()
    out = zeroshot_evaluate(model, tokenizer, images[:8], labels[:8], CLASSNAMES, TEMPLATES, dtype=torch.bfloat16)
    assert model.training
    assert set(out) == {"top1", "top5", "mean_per_class_recall"}
    assert all(0.0 <= v <= 1.0 for v in out.values())
    model.eval()
    zeroshot_evaluate(model, tokenizer, images[:4], labels[:4], CLASSNAMES, TEMPLATES)
    assert not model.training


def test_zeroshot_evaluate_rejects_bad_inputs(tiny):
    model, tokenizer, images, labels = tiny
    with pytest.raises(ValueError, match="labels must be None"):
        zeroshot_evaluate(model, tokenizer, [(images, labels)], labels, CLASSNAMES, TEMPLATES)
    with pytest.raises(ValueError, match="labels are required"):
        zeroshot_evaluate(model, tokenizer, images, None, CLASSNAMES, TEMPLATES)
    with pytest.raises(ValueError, match="no images"):
        zeroshot_evaluate(model, tokenizer, [], None, CLASSNAMES, TEMPLATES)
    with pytest.raises(ValueError, match="meta"):
        zeroshot_evaluate(model, tokenizer, images, labels, CLASSNAMES, TEMPLATES, device="meta")


def test_retrieval_evaluate_equals_hand_computation(tiny):
    model, tokenizer, images, _ = tiny
    model.train()
    captions = [[f"photo {i}", f"picture number {i}"] for i in range(10)] + [[], ["just one caption"]]
    images = images[:12]
    got = retrieval_evaluate(model, tokenizer, images, captions, batch_size=5, ks=(1, 5))
    assert model.training

    model.eval()
    with torch.no_grad():
        image_features = model.encode_image(images, normalize=True)
        texts = [t for per_image in captions for t in per_image]
        text_features = model.encode_text(tokenizer(texts), normalize=True)
    text_to_image = torch.tensor([i for i, per_image in enumerate(captions) for _ in per_image])
    expected = retrieval_recall(image_features, text_features, text_to_image, ks=(1, 5))
    assert got == pytest.approx(expected, abs=1e-9)
    assert set(got) == {"image_to_text_R@1", "image_to_text_R@5", "text_to_image_R@1", "text_to_image_R@5"}

    with pytest.raises(ValueError, match="one list per image"):
        retrieval_evaluate(model, tokenizer, images[:2], ["a", "b"])
