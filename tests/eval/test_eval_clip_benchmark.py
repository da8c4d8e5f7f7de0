"""Agreement with CLIP_benchmark (LAION-AI/CLIP_benchmark, `clip-benchmark==1.6.2` on PyPI) on the same model and data.

Both libraries score the very same features: CLIP_benchmark gets the clipforge model through a two-method
adapter (`encode_image`, `encode_text`, unnormalised, which is what its evaluators call) and clipforge's
tokenizer, so what is compared is the evaluation protocol, not two implementations of the towers.

- Zero-shot classification on 1,000 Fashion-MNIST test images (the seeded subset `max_samples=1000` picks,
  rebuilt with `SubsetView` for CLIP_benchmark): clipforge's `run_task` against
  `clip_benchmark.metrics.zeroshot_classification.evaluate`. CLIP_benchmark scales logits by a fixed 100,
  clipforge by `exp(logit_scale)`; both are positive factors, so rankings agree.
- Retrieval: `clipforge.eval.retrieval.retrieval_evaluate` against `zeroshot_retrieval.evaluate` on the first
  200 Tux Paint stamps with distinct captions, and on synthetic images with one to three captions each.
  Tie rules differ (clipforge: equal scores ordered by index; CLIP_benchmark: whatever `torch.topk` returns),
  so the sets avoid exact ties: random weights, and no repeated caption (a repeated caption would score
  identically against every image). Key names: CLIP_benchmark's "image_retrieval_recall@k" is text->image,
  its "text_retrieval_recall@k" image->text.

CLIP_benchmark 1.6.2's `accuracy` does `float(ndarray of shape (1,))`, which NumPy >= 2.4 refuses
("only 0-dimensional arrays can be converted to Python scalars"); the test swaps in the same function with
`.item()` (`_accuracy` below), nothing else of CLIP_benchmark is changed.

Both must agree to 1e-6, i.e. identical hit counts. clip-benchmark installs with its own requirements
(scikit-learn, webdataset, pycocoevalcap, ...) under constraints.txt; the metric modules used here import only
torch, tqdm and scikit-learn (no open_clip, no torchvision).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

import clipforge
from clipforge.eval.datasets import DatasetNotFound, load_eval_dataset
from clipforge.eval.datasets.base import ArrayImages, RetrievalSet
from clipforge.eval.retrieval import retrieval_evaluate
from clipforge.eval.tasks import EvalContext, EvalRequest, SubsetView, run_task

zsc = pytest.importorskip("clip_benchmark.metrics.zeroshot_classification")
zsr = pytest.importorskip("clip_benchmark.metrics.zeroshot_retrieval")

TOL = 1e-6


class _Adapter(torch.nn.Module):
    """What CLIP_benchmark's evaluators call: unnormalised `encode_image` and `encode_text`."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(images)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(tokens)


class _Labelled(Dataset):
    def __init__(self, dataset, preprocess) -> None:
        self.dataset, self.preprocess = dataset, preprocess
        self.classes = list(dataset.classnames)  # CLIP_benchmark reads dataloader.dataset.classes

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        return self.preprocess(self.dataset.load(i)), self.dataset.labels[i]


def _accuracy(output: torch.Tensor, target: torch.Tensor, topk=(1,)) -> list[float]:
    """clip_benchmark.metrics.zeroshot_classification.accuracy with `.item()` instead of float(ndarray)."""
    pred = output.topk(max(topk), 1, True, True)[1].t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    return [correct[:k].reshape(-1).float().sum().item() / len(target) for k in topk]


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return clipforge.create_model("tiny-vit").eval()


def _load(name: str, **options):
    try:
        return load_eval_dataset(name, **options)
    except DatasetNotFound as exc:
        pytest.skip(str(exc))


def test_zeroshot_classification_matches_clip_benchmark(monkeypatch):
    monkeypatch.setattr(zsc, "accuracy", _accuracy)
    model = _model()
    n = 1000
    request = EvalRequest("zeroshot", "fashion_mnist", max_samples=n)
    result = run_task(model, request, EvalContext("tiny", progress=False))
    ours = {r["metric"]: r["value"] for r in result.records}

    subset = SubsetView(_load("fashion_mnist"), n)  # the subset max_samples=n evaluates
    loader = DataLoader(_Labelled(subset, clipforge.get_preprocess(model)), batch_size=250)
    templates = [t.replace("{}", "{c}") for t in subset.templates]  # CLIP_benchmark formats with c=
    with torch.no_grad():
        theirs = zsc.evaluate(
            _Adapter(model),
            loader,
            clipforge.get_tokenizer(model),
            list(subset.classnames),
            templates,
            "cpu",
            amp=False,
        )

    assert ours["top1"] == pytest.approx(theirs["acc1"], abs=TOL)
    assert ours["top5"] == pytest.approx(theirs["acc5"], abs=TOL)
    assert ours["mean_per_class_recall"] == pytest.approx(theirs["mean_per_class_recall"], abs=TOL)
    assert 0.0 < ours["top5"] < 1.0  # a real comparison, not two saturated scores


def _retrieval_pair(model, images: torch.Tensor, captions: list[tuple[str, ...]]) -> tuple[dict, dict]:
    tokenizer = clipforge.get_tokenizer(model)
    ours = retrieval_evaluate(model, tokenizer, images, captions, batch_size=64)
    pairs = list(zip(images, captions))
    loader = DataLoader(pairs, batch_size=64, collate_fn=lambda b: (torch.stack([x for x, _ in b]), [c for _, c in b]))
    with torch.no_grad():
        theirs = zsr.evaluate(_Adapter(model), loader, tokenizer, "cpu", amp=False, recall_k_list=[1, 5, 10])
    return ours, theirs


def _assert_recalls_agree(ours: dict, theirs: dict) -> None:
    for k in (1, 5, 10):
        assert ours[f"text_to_image_R@{k}"] == pytest.approx(theirs[f"image_retrieval_recall@{k}"], abs=TOL)
        assert ours[f"image_to_text_R@{k}"] == pytest.approx(theirs[f"text_retrieval_recall@{k}"], abs=TOL)
    assert 0.0 < ours["text_to_image_R@10"] < 1.0


def test_retrieval_matches_clip_benchmark_tuxpaint():
    model = _model()
    dataset = _load("tuxpaint")
    rows, seen = [], set()
    for i, (caption,) in enumerate(dataset.captions):  # distinct captions only: duplicates tie exactly
        if caption not in seen:
            seen.add(caption)
            rows.append(i)
        if len(rows) == 200:
            break
    preprocess = clipforge.get_preprocess(model)
    images = torch.stack([preprocess(dataset.load(i)) for i in rows])  # (200, 3, H, W)
    ours, theirs = _retrieval_pair(model, images, [dataset.captions[i] for i in rows])
    _assert_recalls_agree(ours, theirs)


def test_retrieval_matches_clip_benchmark_several_captions():
    model = _model()
    rng = np.random.default_rng(0)
    count = 80
    words = ["red", "blue", "green", "small", "large", "round", "square", "striped", "dotted", "shiny"]
    things = ["cat", "dog", "car", "boat", "house", "tree", "shoe", "cup", "kite", "lamp"]
    captions, seen = [], set()
    for i in range(count):
        per_image = []
        while len(per_image) < 1 + i % 3:  # 1, 2 or 3 captions
            text = f"a {rng.choice(words)} {rng.choice(words)} {rng.choice(things)} number {rng.integers(1000)}"
            if text not in seen:
                seen.add(text)
                per_image.append(text)
        captions.append(tuple(per_image))
    array = rng.integers(0, 256, size=(count, 32, 32, 3), dtype=np.uint8)
    synthetic = RetrievalSet("synthetic", "test", tuple(captions), "synthetic", ArrayImages(array, "synthetic"))
    preprocess = clipforge.get_preprocess(model)
    images = torch.stack([preprocess(synthetic.load(i)) for i in range(count)])  # (80, 3, 32, 32)
    ours, theirs = _retrieval_pair(model, images, list(synthetic.captions))
    _assert_recalls_agree(ours, theirs)
