"""Fashion-MNIST: the vectorised batches equal the PIL eval transform, captions come from the train templates,
the eval set, the missing-install message, and a whole epoch."""

import numpy as np
import pytest
import torch
from PIL import Image

from clipforge.data import (
    FASHION_MNIST_CLASSES,
    FASHION_TEST_TEMPLATES,
    FASHION_TRAIN_TEMPLATES,
    DataConfig,
    SourceConfig,
    TrainData,
    fashion_mnist_eval_set,
    load_fashion_mnist,
)
from clipforge.data.seeding import PERMUTATION, generator
from clipforge.image import EvalTransform, build_transform
from clipforge.models.config import PreprocessConfig
from clipforge.text import CLIPTokenizer


def test_load_fashion_mnist():
    images, labels, classes = load_fashion_mnist("train")
    assert images.shape == (60000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (60000,) and set(np.unique(labels)) == set(range(10))
    assert classes == list(FASHION_MNIST_CLASSES) and classes[0] == "T-shirt" and classes[9] == "ankle boot"
    assert load_fashion_mnist("test")[0].shape == (10000, 28, 28)


def test_missing_fashion_mnist_names_the_install_command(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"apt-get install -y dataset-fashion-mnist"):
        load_fashion_mnist("train", root=str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"apt-get install -y dataset-fashion-mnist"):
        TrainData(DataConfig(sources=(SourceConfig("fashion_mnist", str(tmp_path)),)), None, None)


@pytest.mark.parametrize(
    "cfg",
    [
        PreprocessConfig(size=28),
        PreprocessConfig(size=32),
        PreprocessConfig(size=20, interpolation="bilinear"),
        PreprocessConfig(size=224, resize_mode="squash", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
    ],
    ids=["28", "32", "20-bilinear", "224-squash"],
)
def test_batches_equal_the_pil_eval_transform(cfg):
    tokenizer = CLIPTokenizer(context_length=16)
    data = TrainData(
        DataConfig(sources=(SourceConfig("fashion_mnist"),), batch_size=64, seed=11),
        build_transform(cfg, train=True),
        tokenizer,
    )
    batch = next(iter(data.epoch(2)))
    assert batch.images.shape == (64, 3, cfg.size, cfg.size) and batch.images.dtype == torch.float32
    images, labels, classes = load_fashion_mnist("train")
    indices = generator(PERMUTATION, 11, 2, 0, 0).permutation(60000)[:64]  # epoch 2's order (plan.py)
    reference = EvalTransform(cfg)
    for k in range(0, 64, 13):
        expected = reference(Image.fromarray(images[indices[k]]))
        assert (batch.images[k] - expected).abs().max().item() <= 1e-5
        caption = tokenizer.decode(batch.tokens[k], skip_special_tokens=True).strip()
        name = classes[labels[indices[k]]].lower()
        assert any(
            caption == tokenizer.decode(tokenizer.encode(t.format(name))).strip() for t in FASHION_TRAIN_TEMPLATES
        ), caption


def test_transforms_without_a_preprocess_config_take_the_pil_path():
    cfg = PreprocessConfig(size=24)
    eval_transform = EvalTransform(cfg)
    tokenizer = CLIPTokenizer(context_length=16)
    source = (SourceConfig("fashion_mnist"),)
    fast = TrainData(DataConfig(sources=source, batch_size=32), eval_transform, tokenizer)
    slow = TrainData(DataConfig(sources=source, batch_size=32), lambda image: eval_transform(image), tokenizer)
    a, b = next(iter(fast.epoch(0))), next(iter(slow.epoch(0)))
    assert (a.images - b.images).abs().max().item() <= 1e-5
    assert torch.equal(a.tokens, b.tokens)


def test_captions_use_every_train_template_and_no_test_template():
    assert set(FASHION_TRAIN_TEMPLATES).isdisjoint(FASHION_TEST_TEMPLATES)
    tokenizer = CLIPTokenizer()
    data = TrainData(
        DataConfig(sources=(SourceConfig("fashion_mnist"),), batch_size=500),
        build_transform(PreprocessConfig(size=28)),
        tokenizer,
    )
    batch = next(iter(data.epoch(0)))
    table = tokenizer([t.format(c) for t in FASHION_TRAIN_TEMPLATES for c in FASHION_MNIST_CLASSES])
    rows = {tuple(r) for r in table.tolist()}
    assert all(tuple(r) in rows for r in batch.tokens.tolist())
    used = {(table == row).all(dim=1).nonzero().item() // 10 for row in batch.tokens}
    assert used == set(range(len(FASHION_TRAIN_TEMPLATES)))


def test_eval_set_matches_the_eval_transform():
    cfg = PreprocessConfig(size=32)
    images, labels, classes = fashion_mnist_eval_set(cfg, limit=40)
    assert images.shape == (40, 3, 32, 32) and labels.shape == (40,) and classes == list(FASHION_MNIST_CLASSES)
    raw, raw_labels, _ = load_fashion_mnist("test")
    reference = EvalTransform(cfg)
    expected = torch.stack([reference(Image.fromarray(raw[i])) for i in range(40)])
    assert (images - expected).abs().max().item() <= 1e-5
    assert labels.tolist() == raw_labels[:40].tolist()


def test_an_epoch_is_every_full_batch_of_a_permutation():
    """A whole epoch: 234 full batches of 256 in the epoch's permutation order (its speed: benchmarks/data.py)."""
    data = TrainData(
        DataConfig(sources=(SourceConfig("fashion_mnist"),), batch_size=256),
        build_transform(PreprocessConfig(size=28), train=True),
        CLIPTokenizer(),
    )
    batches = list(data.epoch(1))
    assert len(batches) == 234  # 60,000 // 256: the last partial batch is dropped
    assert all(b.images.shape == (256, 3, 28, 28) and b.tokens.shape[0] == 256 for b in batches)
    assert all(torch.isfinite(b.images).all() for b in batches) and data.bad_counts == {}
    images, _, _ = load_fashion_mnist("train")
    order = generator(PERMUTATION, 0, 1, 0, 0).permutation(60000)[: 234 * 256]  # epoch 1's order (plan.py)
    reference = EvalTransform(PreprocessConfig(size=28))
    for k in (0, 255, 256 * 117 + 3, 234 * 256 - 1):  # first, last of a batch, middle, last of the epoch
        got = batches[k // 256].images[k % 256]  # (3, 28, 28); train transform at size 28 = no crop to draw
        expected = reference(Image.fromarray(images[order[k]]))
        assert (got - expected).abs().max().item() <= 1e-5 * max(1.0, expected.abs().max().item())
