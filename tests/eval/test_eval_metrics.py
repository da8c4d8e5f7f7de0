"""Metrics on hand-built scores and embeddings whose answer is known (ties, duplicates, empty classes)."""

import pytest
import torch
import torch.nn.functional as F

from clipforge.eval import confusion_matrix, mean_per_class_recall, retrieval_recall, topk_accuracy
from clipforge.eval.metrics import class_rank


def test_topk_accuracy_known_answer():
    logits = torch.tensor(
        [
            [0.9, 0.05, 0.03, 0.02],  # label 0: rank 0
            [0.1, 0.2, 0.6, 0.1],  # label 1: rank 1
            [0.4, 0.3, 0.2, 0.1],  # label 3: rank 3
        ]
    )
    labels = torch.tensor([0, 1, 3])
    assert topk_accuracy(logits, labels, ks=(1, 2, 3, 4)) == pytest.approx(
        {"top1": 1 / 3, "top2": 2 / 3, "top3": 2 / 3, "top4": 1.0}
    )
    # k above C is capped at C and keeps the key asked for.
    assert topk_accuracy(logits, labels) == pytest.approx({"top1": 1 / 3, "top5": 1.0})


def test_ties_count_only_when_the_true_class_is_first_among_them_in_index_order():
    logits = torch.tensor([[1.0, 1.0, 1.0, 0.0]] * 3)  # classes 0, 1, 2 tied
    labels = torch.tensor([0, 1, 2])
    assert class_rank(logits, labels).tolist() == [0, 1, 2]
    assert topk_accuracy(logits, labels, ks=(1, 2, 3)) == pytest.approx({"top1": 1 / 3, "top2": 2 / 3, "top3": 1.0})
    # The rule is a stable descending sort's; check it against torch's stable sort on random ties.
    g = torch.Generator().manual_seed(0)
    logits = torch.randint(0, 3, (200, 6), generator=g).float()
    labels = torch.randint(0, 6, (200,), generator=g)
    order = torch.sort(logits, dim=1, descending=True, stable=True).indices
    expected = (order == labels[:, None]).float().argmax(dim=1)
    assert torch.equal(class_rank(logits, labels), expected)
    # Top-1 agrees with argmax (first maximum).
    assert topk_accuracy(logits, labels, ks=(1,))["top1"] == pytest.approx(
        (logits.argmax(1) == labels).float().mean().item()
    )


def test_mean_per_class_recall_ignores_absent_classes():
    # Class 0: 2 of 3 right; class 1: 1 of 1 right; class 2 absent; class 3: 0 of 2 right.
    pred = torch.tensor([0, 0, 1, 1, 0, 1])
    labels = torch.tensor([0, 0, 0, 1, 3, 3])
    logits = F.one_hot(pred, 4).float()
    assert mean_per_class_recall(logits, labels, 4) == pytest.approx((2 / 3 + 1 + 0) / 3)
    # Plain accuracy differs (3 of 6): the unbalanced classes are what per-class recall corrects for.
    assert topk_accuracy(logits, labels, ks=(1,))["top1"] == pytest.approx(0.5)


def test_confusion_matrix_rows_are_true_classes():
    pred = torch.tensor([0, 0, 1, 1, 0, 1])
    labels = torch.tensor([0, 0, 0, 1, 3, 3])
    cm = confusion_matrix(pred, labels, 4)
    assert cm.dtype == torch.long
    assert cm.tolist() == [[2, 1, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0], [1, 1, 0, 0]]
    assert int(cm.sum()) == 6


def test_metric_input_validation():
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        topk_accuracy(torch.zeros(2, 3), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="NaN"):
        topk_accuracy(torch.tensor([[float("nan"), 0.0]]), torch.tensor([0]))
    with pytest.raises(ValueError, match="positive"):
        topk_accuracy(torch.zeros(2, 3), torch.tensor([0, 1]), ks=(0,))
    with pytest.raises(ValueError, match="at least one"):
        topk_accuracy(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(torch.tensor([0, 1]), torch.tensor([0]), 2)


def test_retrieval_identical_features_give_perfect_recall():
    features = F.normalize(torch.randn(50, 16, generator=torch.Generator().manual_seed(1)), dim=-1)
    out = retrieval_recall(features, features, torch.arange(50))
    assert set(out) == {f"{d}_R@{k}" for d in ("image_to_text", "text_to_image") for k in (1, 5, 10)}
    assert all(v == 1.0 for v in out.values())


def test_retrieval_several_captions_per_image_known_answer():
    images = torch.eye(3)  # image i is the basis vector e_i
    texts = torch.tensor(
        [
            [0.0, 1.0, 0.0],  # caption of image 0, but points at image 1
            [0.9, 0.0, 0.1],  # caption of image 0, points at image 0
            [0.0, 0.0, 1.0],  # caption of image 1, points at image 2
            [0.5, 0.0, 0.0],  # caption of image 2, points at image 0
        ]
    )
    text_to_image = torch.tensor([0, 0, 1, 2])
    out = retrieval_recall(images, texts, text_to_image, ks=(1, 2, 3))
    # Image->text ranks (best of its captions): image 0: caption 1 scores 0.9, first -> rank 0.
    # Image 1: scores (1, 0, 0, 0); its caption 2 scores 0 tied with captions 1 and 3 -> after 0 and 1 -> rank 2.
    # Image 2: scores (0, 0.1, 1, 0); its caption 3 scores 0, behind 2 and 1, tied with 0 (lower index) -> rank 3.
    assert out["image_to_text_R@1"] == pytest.approx(1 / 3)
    assert out["image_to_text_R@2"] == pytest.approx(1 / 3)
    assert out["image_to_text_R@3"] == pytest.approx(2 / 3)
    # Text->image ranks: caption 0 -> image 0 scores 0 behind image 1 -> rank 1 (tie with image 2 at higher index).
    # Caption 1 -> rank 0. Caption 2 -> image 1 scores 0, behind 2, tied with 0 (lower index) -> rank 2.
    # Caption 3 -> image 2 scores 0, behind 0, tied with 1 (lower index) -> rank 2.
    assert out["text_to_image_R@1"] == pytest.approx(1 / 4)
    assert out["text_to_image_R@2"] == pytest.approx(2 / 4)
    assert out["text_to_image_R@3"] == pytest.approx(1.0)


def test_retrieval_duplicates_and_images_without_captions():
    # Two identical images (duplicates) with one caption each that matches both equally.
    images = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    texts = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    out = retrieval_recall(images, texts, torch.tensor([0, 1]), ks=(1, 2))
    # The tie between images 0 and 1 goes to the lower index, so caption 1 finds its image only at k=2.
    assert out["text_to_image_R@1"] == pytest.approx(0.5)
    assert out["text_to_image_R@2"] == pytest.approx(1.0)
    # Image 2 has no caption: it is only a distractor, left out of the image->text mean.
    assert out["image_to_text_R@1"] == pytest.approx(0.5)
    assert out["image_to_text_R@2"] == pytest.approx(1.0)


def test_retrieval_in_blocks_equals_one_block_and_brute_force():
    g = torch.Generator().manual_seed(2)
    images = F.normalize(torch.randn(37, 8, generator=g), dim=-1)
    text_to_image = torch.randint(0, 37, (90,), generator=g)
    texts = F.normalize(images[text_to_image] + 0.8 * torch.randn(90, 8, generator=g), dim=-1)
    ks = (1, 5, 10)
    whole = retrieval_recall(images, texts, text_to_image, ks=ks, block_rows=10_000)
    assert retrieval_recall(images, texts, text_to_image, ks=ks, block_rows=7) == whole
    assert retrieval_recall(images, texts, text_to_image, ks=ks, block_rows=1) == whole

    sims = images @ texts.T  # (Ni, Nt)
    order_t2i = torch.sort(sims.T, dim=1, descending=True, stable=True).indices  # (Nt, Ni)
    order_i2t = torch.sort(sims, dim=1, descending=True, stable=True).indices  # (Ni, Nt)
    has_caption = torch.bincount(text_to_image, minlength=37) > 0
    for k in ks:
        t2i = (order_t2i[:, :k] == text_to_image[:, None]).any(1).float().mean().item()
        hits = [(text_to_image[order_i2t[i, :k]] == i).any().item() for i in range(37) if has_caption[i]]
        assert whole[f"text_to_image_R@{k}"] == pytest.approx(t2i)
        assert whole[f"image_to_text_R@{k}"] == pytest.approx(sum(hits) / len(hits))
