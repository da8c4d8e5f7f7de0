"""Evaluation sets from installed packages: Fashion-MNIST and Tux Paint (Debian), simulated textiles (PyPI).

These need the data installed (scripts/ installs it); a missing install fails with the install command.
"""

import pytest

from clipforge.data import FASHION_MNIST_CLASSES, FASHION_TEST_TEMPLATES
from clipforge.eval.datasets import ClassificationSet, DatasetNotFound, RetrievalSet, load_eval_dataset


def test_fashion_mnist_test_split():
    ds = load_eval_dataset("fashion_mnist")
    assert isinstance(ds, ClassificationSet) and len(ds) == 10_000
    assert ds.classnames == FASHION_MNIST_CLASSES and ds.templates == FASHION_TEST_TEMPLATES
    assert sorted(set(ds.labels)) == list(range(10))
    image = ds.load(0)
    assert image.mode == "RGB" and image.size == (28, 28)
    assert load_eval_dataset("fashion_mnist").fingerprint == ds.fingerprint
    assert load_eval_dataset("fashion_mnist", split="train").fingerprint != ds.fingerprint


def test_fashion_mnist_missing_names_install_command(tmp_path):
    with pytest.raises(DatasetNotFound, match="apt-get install -y dataset-fashion-mnist") as info:
        load_eval_dataset("fashion_mnist", tmp_path)
    assert str(tmp_path) in str(info.value) and "idx3" in str(info.value)


def test_tuxpaint_retrieval_and_classification():
    ret = load_eval_dataset("tuxpaint")
    assert isinstance(ret, RetrievalSet) and len(ret) > 500
    assert all(len(c) == 1 and c[0] for c in ret.captions)
    assert ret.load(0).mode == "RGB"
    cls = load_eval_dataset("tuxpaint", task="classification")
    assert "animals" in cls.classnames and "natural forces" in cls.classnames
    assert len(cls) == len(ret) and cls.load(len(cls) - 1).mode == "RGB"
    with pytest.raises(DatasetNotFound, match="tuxpaint-stamps-default"):
        load_eval_dataset("tuxpaint", "/nonexistent/stamps")


def test_textile_all_and_seeded_split():
    ds = load_eval_dataset("textile")
    assert ds.classnames == ("nominal", "local defect", "global defect") and len(ds) == 2000
    assert [ds.labels.count(k) for k in range(3)] == [1000, 500, 500]
    assert ds.load(0).size == (250, 250)
    train = load_eval_dataset("textile", split="train", seed=1, test_fraction=0.2)
    test = load_eval_dataset("textile", split="test", seed=1, test_fraction=0.2)
    assert [test.labels.count(k) for k in range(3)] == [200, 100, 100] and len(train) == 1600
    assert load_eval_dataset("textile", split="test", seed=1, test_fraction=0.2) == test
    assert load_eval_dataset("textile", split="test", seed=2, test_fraction=0.2).fingerprint != test.fingerprint
    with pytest.raises(ValueError, match="split"):
        load_eval_dataset("textile", split="train")  # a train split needs a seed
    with pytest.raises(DatasetNotFound, match="pip install conformal-clip-data"):
        load_eval_dataset("textile", "/nonexistent")
