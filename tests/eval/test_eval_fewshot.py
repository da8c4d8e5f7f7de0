"""Few-shot evaluation: k-shot sampling, the prototype classifier's known answers, seeds, short classes."""

import pytest
import torch

from clipforge.eval.fewshot import few_shot, prototype_logits, sample_k_shot


def two_clusters() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Class 0 points near +x, class 1 near +y (any one of them is a perfect 1-shot prototype)."""
    train = torch.tensor([[1.0, 0.1], [2.0, -0.2], [3.0, 0.3], [0.1, 1.0], [-0.2, 2.0], [0.3, 3.0]])
    train_labels = torch.tensor([0, 0, 0, 1, 1, 1])
    test = torch.tensor([[5.0, 1.0], [1.0, 4.0], [0.9, -0.3], [-0.4, 0.8]])
    test_labels = torch.tensor([0, 1, 0, 1])
    return train, train_labels, test, test_labels


def test_sampling_takes_exactly_k_per_class_is_seeded_and_reports_short_classes():
    labels = torch.tensor([0] * 5 + [1] * 2 + [2] * 4)
    index, short = sample_k_shot(labels, 4, k=3, seed=7)
    assert labels[index].bincount(minlength=4).tolist() == [3, 2, 3, 0]
    assert short == {1: 2, 3: 0}
    assert torch.equal(index, sample_k_shot(labels, 4, k=3, seed=7)[0])
    assert index.tolist() == sorted(index.tolist())
    draws = {tuple(sample_k_shot(labels, 4, k=1, seed=s)[0].tolist()) for s in range(10)}
    assert len(draws) > 1  # different seeds draw different shots


def test_one_shot_prototypes_on_two_clusters_are_exact():
    train, train_labels, test, test_labels = two_clusters()
    result = few_shot(train, train_labels, test, test_labels, 2, ks=(1,), seeds=(0, 1, 2, 3))
    assert result[1]["runs"] == [1.0, 1.0, 1.0, 1.0]
    assert result[1]["mean"] == 1.0 and result[1]["std"] == 0.0 and result[1]["short_classes"] == {}


def test_prototype_is_the_renormalised_mean_of_unit_features():
    train = torch.tensor([[2.0, 0.0], [0.0, 5.0], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 1])
    test = torch.tensor([[1.0, 1.0], [3.0, 0.0]])
    logits = prototype_logits(train, labels, test, 3)
    s = 2**-0.5
    # Class 0: mean of (1, 0) and (0, 1), renormalised -> (s, s); class 2 has no rows and is never chosen.
    torch.testing.assert_close(logits, torch.tensor([[1.0, s, -3.0], [s, 0.0, -3.0]]))


def test_std_is_zero_when_every_seed_draws_the_whole_set():
    train, train_labels, test, test_labels = two_clusters()
    train_labels = torch.tensor([0, 0, 1, 1, 0, 1])  # a harder labelling, so accuracy is not trivially 1
    result = few_shot(train, train_labels, test, test_labels, 2, ks=(3, 10), seeds=(0, 1, 2))
    assert result[3]["std"] == 0.0 and len(set(result[3]["runs"])) == 1
    assert result[10]["runs"] == result[3]["runs"]
    assert result[10]["short_classes"] == {0: 3, 1: 3} and result[3]["short_classes"] == {}


def test_linear_probe_method_with_one_shot_and_searched_l2():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 6, generator=g) * 6
    train_labels = torch.arange(60) % 3
    train = centres[train_labels] + torch.randn(60, 6, generator=g)
    test_labels = torch.arange(30) % 3
    test = centres[test_labels] + torch.randn(30, 6, generator=g)
    result = few_shot(
        train, train_labels, test, test_labels, 3, ks=(1, 4), seeds=(0, 1), method="linear_probe", max_iter=100
    )
    assert set(result) == {1, 4}
    for k in (1, 4):
        assert len(result[k]["runs"]) == 2 and result[k]["mean"] >= 0.9


def test_rejects_unknown_method():
    train, train_labels, test, test_labels = two_clusters()
    with pytest.raises(ValueError, match="method"):
        few_shot(train, train_labels, test, test_labels, 2, method="knn")
