"""Evaluation tasks on a dataset: zero-shot, retrieval, linear probe, few-shot, few-shot adapters (adapt).

`run_task(model, request, ...)` encodes what the task needs (through the feature cache), computes the
metrics and returns flat records `{model, dataset, split, task, metric, value}` plus the arrays the
report plots (per-class accuracy, confusion matrix, few-shot curve, retrieval examples). Protocols:
zero-shot with prompt ensembling (Radford et al. 2021, 3.1.4), CuPL descriptions (Pratt et al. 2023),
CHiLS subclasses (Novack et al. 2023); linear probe with L2 chosen on a split of the training data
(App. A.3); k-shot prototype and linear-probe classifiers over several seeds.

Tasks that learn from a train split (linear probe, few-shot) never learn from test images: the pair is
checked by `splits.plan_train_test` (a dataset without a distinct train split gets a seeded, disjoint,
stratified split carved, or is refused), and every record of such a task carries `split_policy`, the
sentence saying what trained and what was tested. Every encoded split adds a `skipped_images` record
whose `skipped` lists the unreadable images (path and reason, the first MAX_LISTED_SKIPS of them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from ..factory import get_preprocess, get_tokenizer
from ..models.clip import CLIP
from ..zeroshot import build_class_weights, get_templates
from .datasets import load_eval_dataset
from .features import EncodedSet, encode_images, encode_texts, weights_hash
from .items import item_name
from .metrics import confusion_matrix, mean_per_class_recall, retrieval_recall, topk_accuracy
from .splits import RowsView, plan_train_test
from .zeroshot import encoding_context

TaskName = Literal["zeroshot", "retrieval", "linear_probe", "fewshot", "adapt"]
TASKS = ("zeroshot", "retrieval", "linear_probe", "fewshot", "adapt")
ADAPT_DEFAULT_METHODS = ("zeroshot", "prototype", "nn1", "tip", "gda", "tip_f", "linear_probe")
ADAPT_DEFAULT_SEEDS = (1, 2, 3)  # Dassl/CoOp seeds: `clipforge eval --task adapt` uses them unless --seeds is given
MAX_LISTED_SKIPS = 50  # skipped images listed by name per encoded split; the rest are counted


@dataclass(frozen=True)
class EvalRequest:
    """One (task, dataset) evaluation.

    Fields:
        task: "zeroshot" | "retrieval" | "linear_probe" | "fewshot".
        dataset: a name from `list_eval_datasets()`; root: where it lives (None: built-in location).
        split: the evaluated split; train_split: the split probes and few-shot classifiers learn from.
        templates: a built-in template set name or a file (None: the dataset's own CLIP templates).
        descriptions: a CuPL-style JSON {class: [descriptions]} used instead of / with templates.
        hierarchy: a CHiLS JSON {class: [subclasses]}: predict over subclasses, map to the class.
        ks / seeds: few-shot (and adapt) shots per class and sampling seeds (CoOp's seeds are ADAPT_DEFAULT_SEEDS).
        options: extra keyword options for the dataset loader (e.g. CSV column names).
        max_samples: evaluate a seeded random subset of at most this many items per split (None: all).
        carve_test_fraction: when the train split holds the same images as the evaluated one (a dataset
            without separate splits), the share of each class a seeded carved split tests; None refuses.
        split_seed: the seed of that carved split.
        methods: (task "adapt") the clipforge.adapt methods to compare; views: augmented views per support image
            (train transform, seeded) for the methods that use them (Tip-Adapter's cache, GDA).
    """

    task: TaskName
    dataset: str
    root: str | None = None
    split: str = "test"
    train_split: str = "train"
    templates: str | None = None
    descriptions: str | None = None
    hierarchy: str | None = None
    ks: tuple[int, ...] = (1, 2, 4, 8, 16)
    seeds: tuple[int, ...] = (0, 1, 2)
    options: dict[str, Any] = field(default_factory=dict)
    max_samples: int | None = None
    carve_test_fraction: float | None = 0.2
    split_seed: int = 0
    methods: tuple[str, ...] = ADAPT_DEFAULT_METHODS
    views: int = 0

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; expected one of {list(TASKS)}")
        if self.task == "adapt":
            from ..adapt import list_methods

            unknown = [m for m in self.methods if m not in list_methods()]
            if unknown or not self.methods:
                raise ValueError(f"unknown adapt method(s) {unknown}; choose from {', '.join(list_methods())}")
            if self.views < 0:
                raise ValueError(f"views must be >= 0, got {self.views}")
        if self.carve_test_fraction is not None and not 0 < self.carve_test_fraction < 1:
            raise ValueError(f"carve_test_fraction must be in (0, 1) or None, got {self.carve_test_fraction}")


@dataclass
class TaskResult:
    """One task's records, the artifacts its plots need, and how many image sets were encoded anew."""
    records: list[dict[str, Any]]
    artifacts: dict[str, Any]  # per_class (classnames, accuracy), confusion, fewshot curve, retrieval examples
    encoded_again: int  # how many image sets had to be encoded (0 when everything came from the cache)


@dataclass
class EvalContext:
    """Shared settings of one evaluation run (not per task)."""

    model_name: str
    cache_dir: str | Path | None = None
    batch_size: int = 256
    num_workers: int = 0
    device: torch.device | str | None = None
    dtype: torch.dtype | None = None
    progress: bool = True
    hash_contents: bool | None = None  # feature-cache key hashes file bytes: None = auto (small sets)
    _hash: str | None = None

    def model_hash(self, model: CLIP) -> str:
        """The hash of the model's weights (computed once), the feature cache's model key."""
        if self._hash is None:
            self._hash = weights_hash(model)
        return self._hash


class SubsetView(RowsView):
    """A seeded random subset of a Classification/RetrievalSet with the same protocol (for max_samples)."""

    def __init__(self, dataset: Any, count: int, seed: int = 0) -> None:
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:count].sort().values
        super().__init__(dataset, order.tolist(), f"{dataset.fingerprint}:subset{count}:{seed}")


def _subset(req: EvalRequest, dataset: Any) -> Any:
    if req.max_samples is not None and len(dataset) > req.max_samples:
        return SubsetView(dataset, req.max_samples)
    return dataset


def _load(req: EvalRequest, split: str):
    return _subset(req, load_eval_dataset(req.dataset, req.root, split, **req.options))


def _encode(model: CLIP, dataset, ctx: EvalContext) -> EncodedSet:
    return encode_images(
        model,
        dataset,
        get_preprocess(model),
        cache_dir=ctx.cache_dir,
        model_hash=ctx.model_hash(model),
        batch_size=ctx.batch_size,
        num_workers=ctx.num_workers,
        device=ctx.device,
        dtype=ctx.dtype,
        progress=ctx.progress,
        hash_contents=ctx.hash_contents,
    )


def _labels(dataset: Any, encoded: EncodedSet) -> torch.Tensor:
    return torch.tensor([dataset.labels[i] for i in encoded.indices], dtype=torch.long)


def _record(ctx: EvalContext, req: EvalRequest, metric: str, value: float, split: str | None = None) -> dict:
    return {
        "model": ctx.model_name,
        "dataset": req.dataset,
        "split": split or req.split,
        "task": req.task,
        "metric": metric,
        "value": float(value),
    }


def skipped_record(ctx: EvalContext, req: EvalRequest, dataset: Any, encoded: EncodedSet) -> dict:
    """The `skipped_images` record of one encoded split: the count, and which images and why (capped)."""
    record = _record(ctx, req, "skipped_images", len(encoded.skipped), dataset.split)
    listed = sorted(encoded.skipped)[:MAX_LISTED_SKIPS]
    record["skipped"] = [{"path": item_name(dataset, i), "reason": encoded.skipped[i]} for i in listed]
    record["skipped_not_listed"] = len(encoded.skipped) - len(listed)
    return record


def _class_weights(
    model: CLIP, req: EvalRequest, names: list[str], default_templates: tuple[str, ...], ctx: EvalContext
) -> torch.Tensor:
    tokenizer = get_tokenizer(model)
    templates = get_templates(req.templates) if req.templates else list(default_templates)
    # Class prompts are encoded under the same autocast as the images: mixing bf16 images with fp32 text
    # would score neither configuration the user asked for.
    with encoding_context(model, ctx.device, ctx.dtype):
        if req.descriptions:
            from .prompts import class_weights_from_descriptions, load_class_descriptions

            described = load_class_descriptions(req.descriptions)
            return class_weights_from_descriptions(model, tokenizer, names, described, templates).float().cpu()
        return build_class_weights(model, tokenizer, names, templates, ctx.batch_size).float().cpu()


def zeroshot(model: CLIP, req: EvalRequest, ctx: EvalContext) -> TaskResult:
    """Zero-shot top-1/top-5 and mean per-class recall of `model` on a labelled dataset."""
    dataset = _load(req, req.split)
    if not hasattr(dataset, "labels"):
        raise ValueError(f"zero-shot classification needs a labelled dataset; {req.dataset} holds captions")
    encoded = _encode(model, dataset, ctx)
    labels = _labels(dataset, encoded)
    classnames = list(dataset.classnames)
    scale = float(model.logit_scale.detach().exp())
    if req.hierarchy:
        import json

        from ..safeio import read_text_file
        from .prompts import build_hierarchy, hierarchical_predict

        try:
            mapping = json.loads(read_text_file(req.hierarchy, what="hierarchy file"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{req.hierarchy}: not valid JSON ({exc})") from exc
        sub_names, sub_to_parent, parents = build_hierarchy(mapping)
        if list(parents) != classnames:
            raise ValueError(f"{req.hierarchy}: its classes {list(parents)} must equal the dataset's {classnames}")
        weights = _class_weights(model, req, list(sub_names), dataset.templates, ctx)
        sub_logits = scale * encoded.features @ weights
        pred = hierarchical_predict(sub_logits, torch.as_tensor(sub_to_parent), len(classnames))
        logits = torch.nn.functional.one_hot(pred, len(classnames)).float()  # hard parent decisions
    else:
        weights = _class_weights(model, req, classnames, dataset.templates, ctx)
        logits = scale * encoded.features @ weights  # (N, C)
    scores = topk_accuracy(logits, labels, ks=(1, 5))
    scores["mean_per_class_recall"] = mean_per_class_recall(logits, labels, len(classnames))
    cm = confusion_matrix(logits.argmax(-1), labels, len(classnames))
    per_class = (cm.diag().float() / cm.sum(1).clamp(min=1).float()).tolist()
    records = [_record(ctx, req, k, v) for k, v in scores.items()]
    records.append(skipped_record(ctx, req, dataset, encoded))
    return TaskResult(
        records,
        {"classnames": classnames, "per_class": per_class, "confusion": cm.tolist()},
        int(not encoded.cache_hit),
    )


def retrieval(model: CLIP, req: EvalRequest, ctx: EvalContext) -> TaskResult:
    """Image-to-text and text-to-image recall@1/5/10 of `model` on a captioned dataset."""
    dataset = _load(req, req.split)
    if not hasattr(dataset, "captions"):
        raise ValueError(f"retrieval needs a captioned dataset; {req.dataset} holds class labels")
    encoded = _encode(model, dataset, ctx)
    captions = [dataset.captions[i] for i in encoded.indices]
    texts = [c for per_image in captions for c in per_image]
    text_to_image = torch.tensor([row for row, per_image in enumerate(captions) for _ in per_image])
    text_features = encode_texts(model, get_tokenizer(model), texts, ctx.batch_size, ctx.device, ctx.dtype)
    scores = retrieval_recall(encoded.features, text_features, text_to_image)
    examples = []
    for q in range(min(4, len(texts))):
        top = (text_features[q] @ encoded.features.T).topk(min(5, len(encoded.indices))).indices.tolist()
        examples.append(
            {
                "query": texts[q],
                "truth": encoded.indices[int(text_to_image[q])],
                "top": [encoded.indices[i] for i in top],
            }
        )
    records = [_record(ctx, req, k, v) for k, v in scores.items()]
    records.append(skipped_record(ctx, req, dataset, encoded))
    return TaskResult(records, {"examples": examples, "dataset": dataset}, int(not encoded.cache_hit))


@dataclass
class _TrainTest:
    train_x: torch.Tensor  # (N_train, D)
    train_y: torch.Tensor  # (N_train,)
    test_x: torch.Tensor  # (N_test, D)
    test_y: torch.Tensor  # (N_test,)
    num_classes: int
    policy: str
    skip_records: list[dict]
    encoded_again: int


def _train_test(model: CLIP, req: EvalRequest, ctx: EvalContext) -> _TrainTest:
    """Encode the disjoint train/test pair of `req` (see splits.plan_train_test); max_samples applies after."""
    full_train = load_eval_dataset(req.dataset, req.root, req.train_split, **req.options)
    full_test = load_eval_dataset(req.dataset, req.root, req.split, **req.options)
    if not hasattr(full_train, "labels") or not hasattr(full_test, "labels"):
        raise ValueError(f"{req.task} needs a labelled dataset; {req.dataset} holds captions")
    plan = plan_train_test(full_train, full_test, test_fraction=req.carve_test_fraction, seed=req.split_seed)
    train_set, test_set = _subset(req, plan.train), _subset(req, plan.test)
    train_enc, test_enc = _encode(model, train_set, ctx), _encode(model, test_set, ctx)
    policy = plan.policy
    if train_set is not plan.train or test_set is not plan.test:
        policy += f"; max_samples={req.max_samples}: seeded subsets of {len(train_set)} and {len(test_set)} images"
    return _TrainTest(
        train_enc.features,
        _labels(train_set, train_enc),
        test_enc.features,
        _labels(test_set, test_enc),
        len(test_set.classnames),
        policy,
        [skipped_record(ctx, req, train_set, train_enc), skipped_record(ctx, req, test_set, test_enc)],
        int(not train_enc.cache_hit) + int(not test_enc.cache_hit),
    )


def _with_policy(records: list[dict], policy: str) -> list[dict]:
    for record in records:
        record["split_policy"] = policy
    return records


def linear_probe_task(model: CLIP, req: EvalRequest, ctx: EvalContext) -> TaskResult:
    """Linear probe: logistic regression on the train split's features, scored on the evaluated split."""
    from .probe import linear_probe

    data = _train_test(model, req, ctx)
    result = linear_probe(data.train_x, data.train_y, data.test_x, data.test_y, data.num_classes)
    records = [_record(ctx, req, m, getattr(result, m)) for m in ("top1", "top5", "mean_per_class_recall")]
    records += [
        _record(ctx, req, "l2", result.l2, req.train_split),
        _record(ctx, req, "val_top1", result.val_top1, req.train_split),
    ]
    return TaskResult(_with_policy(records + data.skip_records, data.policy), {}, data.encoded_again)


def fewshot_task(model: CLIP, req: EvalRequest, ctx: EvalContext) -> TaskResult:
    """k-shot prototype and linear-probe classifiers over the request's shots and seeds."""
    from .fewshot import few_shot

    data = _train_test(model, req, ctx)
    records, curves = [], {}
    for method in ("prototype", "linear_probe"):
        arrays = (data.train_x, data.train_y, data.test_x, data.test_y)
        out = few_shot(*arrays, data.num_classes, ks=req.ks, seeds=req.seeds, method=method)
        curves[method] = {int(k): v for k, v in out.items()}
        for k, stats in out.items():
            records.append(_record(ctx, req, f"{method}_{k}shot_top1_mean", stats["mean"]))
            records.append(_record(ctx, req, f"{method}_{k}shot_top1_std", stats["std"]))
    return TaskResult(_with_policy(records + data.skip_records, data.policy), {"fewshot": curves}, data.encoded_again)


def adapt_task(model: CLIP, req: EvalRequest, ctx: EvalContext) -> TaskResult:
    """Few-shot adapters under the honest protocol (clipforge.adapt.protocol): accuracy mean/std over seeds and
    mean fit time per method x k, the chosen hyper-parameters of every run, and base-to-new accuracy (at the
    largest k) for the methods that can score unseen classes."""
    from ..adapt import FitContext
    from ..adapt.base import get_method
    from ..adapt.data import encode_labelled_set
    from ..adapt.protocol import BASE_TO_NEW, PRE_PROJECTION_METHODS, aggregate, run_base_to_new, run_protocol

    full_train = load_eval_dataset(req.dataset, req.root, req.train_split, **req.options)
    full_test = load_eval_dataset(req.dataset, req.root, req.split, **req.options)
    if not hasattr(full_train, "labels") or not hasattr(full_test, "labels"):
        raise ValueError(f"adapt needs a labelled dataset; {req.dataset} holds captions")
    plan = plan_train_test(full_train, full_test, test_fraction=req.carve_test_fraction, seed=req.split_seed)
    train_set, test_set = _subset(req, plan.train), _subset(req, plan.test)
    seeds = req.seeds
    # ProLIP scores pre-projection features: encode them (same pass, own cache entry) only when it is asked for.
    pre = any(m in PRE_PROJECTION_METHODS for m in req.methods)
    train = encode_labelled_set(model, train_set, views=req.views, seed=req.split_seed, ctx=ctx, pre_features=pre)
    test = encode_labelled_set(model, test_set, ctx=ctx, pre_features=pre)
    classnames = list(test_set.classnames)
    weights = _class_weights(model, req, classnames, test_set.templates, ctx)  # (D, C)
    # Methods marked `needs_model` (coop, cocoop, prolip) train through the towers: give them the model.
    needs_model = any(getattr(get_method(m), "needs_model", False) for m in req.methods)
    # CLAP anchors to the unnormalised prompt means (the reference's base text features), from the same templates.
    prompt_means = None
    if "clap" in req.methods and not req.descriptions:
        from ..adapt.prompts import text_anchors

        templates = get_templates(req.templates) if req.templates else list(test_set.templates)
        with encoding_context(model, ctx.device, ctx.dtype):
            prompt_means = text_anchors(model, classnames, templates)[1].float().cpu()  # (D, C)
    fit_ctx = FitContext(
        weights,
        float(model.logit_scale.detach().exp()),
        model if needs_model else None,
        "cpu",
        prompt_means=prompt_means,
    )
    runs = run_protocol(fit_ctx, train.features, test.features, req.methods, req.ks, seeds)
    records, curves = [], {}
    for row in aggregate(runs):
        method, k = row["method"], row["shots"]
        curves.setdefault(method, {})[k] = {"mean": row["mean"], "std": row["std"]}
        mean = _record(ctx, req, f"{method}_{k}shot_top1_mean", row["mean"])
        mean["runs"] = row["runs"]
        mean["seeds"] = list(seeds)
        mean["hparams"] = [r["hparams"] for r in runs if (r["method"], r["shots"]) == (method, k)]
        records += [
            mean,
            _record(ctx, req, f"{method}_{k}shot_top1_std", row["std"]),
            _record(ctx, req, f"{method}_{k}shot_fit_s", row["fit_seconds"]),
        ]
    transfer = [m for m in req.methods if m in BASE_TO_NEW]
    if transfer and len(classnames) >= 2:
        b2n = run_base_to_new(fit_ctx, train.features, test.features, transfer, (max(req.ks),), seeds)
        for method in transfer:
            rows = [r for r in b2n if r["method"] == method]
            for part in ("base", "new", "harmonic"):
                record = _record(ctx, req, f"{method}_{part}", sum(r[part] for r in rows) / len(rows))
                record["shots"] = max(req.ks)
                records.append(record)
    policy = plan.policy + (
        f"; k-shot support and validation (min(k, 4) per class) drawn from the train side, seeds {list(seeds)}"
    )
    skips = [
        skipped_record(ctx, req, train_set, EncodedSet(train.features.features, train.indices, train.skipped, True)),
        skipped_record(ctx, req, test_set, EncodedSet(test.features.features, test.indices, test.skipped, True)),
    ]
    return TaskResult(
        _with_policy(records + skips, policy), {"adapt": curves}, train.encoded_again + test.encoded_again
    )


RUNNERS = {
    "zeroshot": zeroshot,
    "retrieval": retrieval,
    "linear_probe": linear_probe_task,
    "fewshot": fewshot_task,
    "adapt": adapt_task,
}


def run_task(model: CLIP, req: EvalRequest, ctx: EvalContext) -> TaskResult:
    """Run `req` (any task) for `model`."""
    return RUNNERS[req.task](model, req, ctx)
