"""Evaluation during training: zero-shot accuracy on a labelled set, retrieval recall on held-out pairs.

Datasets are loaded once per run (the first evaluation) and reused; the model is evaluated in eval
mode and put back in train mode by `eval/` (see `encoding_context`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..data import DataConfig, TrainData
from ..data.plan import source_size
from ..data.sources import build_source
from ..eval.metrics import retrieval_recall
from ..eval.zeroshot import zeroshot_evaluate
from ..factory import get_preprocess
from ..models.clip import CLIP
from .config import EvalConfig


class PeriodicEvaluator:
    """`evaluator() -> {"zeroshot_top1": ..., "retrieval_image_to_text_R@1": ...}` for the configured sets."""

    def __init__(
        self, cfg: EvalConfig, model: CLIP, tokenizer: Callable, device: torch.device, dtype: torch.dtype | None
    ) -> None:
        self.cfg = cfg
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.dtype = dtype
        self._zeroshot_set = None
        self._retrieval_set = None

    @property
    def enabled(self) -> bool:
        """Whether any evaluation (zero-shot, retrieval or harness requests) is configured."""
        return self.cfg.zeroshot is not None or self.cfg.retrieval is not None or bool(self.cfg.harness)

    def _load_zeroshot(self):
        if self.cfg.zeroshot != "fashion_mnist":
            raise ValueError(f"eval.zeroshot={self.cfg.zeroshot!r} is not a known labelled set (known: fashion_mnist)")
        from ..data import FASHION_TEST_TEMPLATES, fashion_mnist_eval_set

        images, labels, classnames = fashion_mnist_eval_set(self.model.config.preprocess)
        if self.cfg.zeroshot_max_samples is not None:
            images, labels = images[: self.cfg.zeroshot_max_samples], labels[: self.cfg.zeroshot_max_samples]
        return images, torch.as_tensor(labels), classnames, list(FASHION_TEST_TEMPLATES)

    def _load_retrieval(self) -> tuple[torch.Tensor, torch.Tensor]:
        limit = self.cfg.retrieval_max_samples
        available = source_size(build_source(self.cfg.retrieval))
        wanted = available if limit is None else min(limit, available)
        if wanted < 1:
            source = self.cfg.retrieval
            raise ValueError(f"eval.retrieval ({source.kind} {source.path}) holds no image-caption pairs")
        # The data layer drops an epoch's remainder; a batch size that divides `wanted` keeps every pair,
        # so a small held-out set (fewer pairs than one batch) is evaluated whole.
        batch_size = max(d for d in range(1, min(256, wanted) + 1) if wanted % d == 0)
        data_cfg = DataConfig(sources=(self.cfg.retrieval,), batch_size=batch_size, seed=0)
        data = TrainData(data_cfg, get_preprocess(self.model), self.tokenizer)
        images, tokens = [], []
        for batch in data.epoch(0):
            images.append(batch.images)
            tokens.append(batch.tokens)
            if sum(len(t) for t in tokens) >= wanted:
                break
        return torch.cat(images)[:wanted], torch.cat(tokens)[:wanted]

    def __call__(self) -> dict[str, float]:
        out: dict[str, float] = {}
        if self.cfg.zeroshot is not None:
            if self._zeroshot_set is None:
                self._zeroshot_set = self._load_zeroshot()
            images, labels, classnames, templates = self._zeroshot_set
            scores = zeroshot_evaluate(
                self.model, self.tokenizer, images, labels, classnames, templates, device=self.device, dtype=self.dtype
            )
            out.update({f"zeroshot_{k}": v for k, v in scores.items()})
        if self.cfg.retrieval is not None:
            if self._retrieval_set is None:
                self._retrieval_set = self._load_retrieval()
            out.update({f"retrieval_{k}": v for k, v in self._recall(*self._retrieval_set).items()})
        if self.cfg.harness:
            from ..eval.tasks import EvalContext, run_task

            # No feature cache: the weights change between evaluations.
            ctx = EvalContext("training", None, device=self.device, dtype=self.dtype, progress=False)
            for request in self.cfg.harness:
                for record in run_task(self.model, request, ctx).records:
                    out[f"{record['dataset']}_{record['task']}_{record['metric']}"] = record["value"]
        return out

    @torch.no_grad()
    def _recall(self, images: torch.Tensor, tokens: torch.Tensor) -> dict[str, float]:
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
                img = torch.cat(
                    [
                        self.model.encode_image(images[i : i + 256].to(self.device), normalize=True).float()
                        for i in range(0, len(images), 256)
                    ]
                )
                txt = torch.cat(
                    [
                        self.model.encode_text(tokens[i : i + 256].to(self.device), normalize=True).float()
                        for i in range(0, len(tokens), 256)
                    ]
                )
        finally:
            self.model.train(was_training)
        return retrieval_recall(img, txt, torch.arange(len(txt)))
