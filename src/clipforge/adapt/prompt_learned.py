"""CoOp (Zhou, Yang, Loy, Liu, "Learning to Prompt for Vision-Language Models", IJCV 2022,
github.com/KaiyangZhou/CoOp, trainers/coop.py): learn the prompt's context words as continuous vectors.

The class prompt is `[SOS] ctx_1 ... ctx_M  classname . [EOS]` (class token at the "end"), or with the class
name between the two halves of the context ("middle"); the M context vectors (one generic set shared by all
classes) are the only trainable parameters. The text tower is frozen and run from token embeddings
(`model.encode_text_embeddings`), so gradients reach the context through it; the image side uses CACHED,
L2-normalised features (no image is re-encoded per epoch), the loss is cross-entropy of
`logit_scale * f @ normalize(text features)^T`.

The fitted adapter stores the learned context AND the resulting class text features, so `logits` of features
needs no model; `for_classes(classnames)` re-runs the prompts for other class names through the bound model
(base-to-new generalisation, the setting in which CoCoOp's paper compares against CoOp).

CoCoOp (Zhou, Yang, Loy, Liu, "Conditional Prompt Learning for Vision-Language Models", CVPR 2022, same
repository, trainers/cocoop.py) adds a meta-net Linear(D, D/16) - ReLU - Linear(D/16, width) whose output for
each image is added to every context vector, so each image gets its own class prompts: B images and C classes
run B * C prompts through the text tower. Its text features therefore cannot be precomputed: a CoCoOp adapter
needs the model at `logits` time (`CoCoOpAdapter.bind(model)`; `fit` returns it bound, `load` does not).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from .base import Adapter, FitContext, LabelledFeatures, register
from .schedule import check_count, set_lr, shuffled_batches, warmup_cosine_lr

POSITIONS = ("end", "middle")


def _tokenizer(model):
    from ..factory import get_tokenizer

    return get_tokenizer(model)


def _name_lengths(tokenizer, classnames: Sequence[str]) -> list[int]:
    """Number of BPE tokens of each class name (between SOS and EOS)."""
    tokens = tokenizer(list(classnames))  # (C, L)
    eot = tokens.argmax(dim=-1)  # EOS has the largest id
    return [int(e) - 1 for e in eot]


class PromptBuilder:
    """Embeds `X X ... X classname.` once and splices context vectors into it: embeddings (C, L, width) for
    a context (M, width). The placeholder prompt's token ids locate the EOS for pooling."""

    def __init__(self, model, classnames: Sequence[str], n_ctx: int, position: str) -> None:
        if position not in POSITIONS:
            raise ValueError(f"CoOp class token position must be one of {POSITIONS}, got {position!r}")
        tokenizer = _tokenizer(model)
        device = next(model.parameters()).device
        prompts = [" ".join(["X"] * n_ctx) + " " + name + "." for name in classnames]
        self.tokens = tokenizer(prompts).to(device)  # (C, L)
        with torch.no_grad():
            embedded = model.text.token_embedding(self.tokens).float()  # (C, L, width)
        self.prefix = embedded[:, :1]  # (C, 1, width): SOS
        self.suffix = embedded[:, 1 + n_ctx :]  # (C, L - 1 - M, width): classname . EOS padding
        self.name_lengths = _name_lengths(tokenizer, classnames)
        self.n_ctx, self.position = n_ctx, position

    def embeddings(self, ctx: torch.Tensor) -> torch.Tensor:
        """Context (M, width) -> prompt embeddings (C, L, width); per-image contexts (B, M, width) -> (B, C, L,
        width) (CoCoOp)."""
        if ctx.ndim == 3:
            return torch.stack([self.embeddings(row) for row in ctx])  # (B, C, L, width)
        num_classes = self.prefix.shape[0]
        ctx = ctx.to(self.prefix.dtype)[None].expand(num_classes, -1, -1)  # (C, M, width)
        if self.position == "end":
            return torch.cat([self.prefix, ctx, self.suffix], dim=1)
        half = self.n_ctx // 2
        rows = []
        for i, n in enumerate(self.name_lengths):  # [SOS] ctx[:half] name ctx[half:] . [EOS]
            rows.append(
                torch.cat(
                    [self.prefix[i], ctx[i, :half], self.suffix[i, :n], ctx[i, half:], self.suffix[i, n:]], dim=0
                )
            )
        return torch.stack(rows)

    def text_features(self, model, ctx: torch.Tensor) -> torch.Tensor:
        """Context (M, width) -> L2-normalised class text features (D, C)."""
        features = model.encode_text_embeddings(self.embeddings(ctx), self.tokens, normalize=True)  # (C, D)
        return features.float().T

    def per_image_text_features(self, model, ctx: torch.Tensor) -> torch.Tensor:
        """Per-image contexts (B, M, width) -> L2-normalised class text features (B, C, D): B * C prompts."""
        embedded = self.embeddings(ctx)  # (B, C, L, width)
        b, c = embedded.shape[:2]
        tokens = self.tokens.repeat(b, 1)  # (B * C, L)
        features = model.encode_text_embeddings(embedded.flatten(0, 1), tokens, normalize=True)  # (B * C, D)
        return features.float().view(b, c, -1)


def init_context(model, n_ctx: int, ctx_init: str, generator: torch.Generator) -> torch.Tensor:
    """CoOp's initial context (M, width): the embedded words of `ctx_init` (M = its token count), or
    N(0, 0.02^2) vectors (the reference's generic random init) when `ctx_init` is empty."""
    width = model.text.token_embedding.weight.shape[1]
    if ctx_init:
        tokens = _tokenizer(model)([ctx_init]).to(next(model.parameters()).device)  # (1, L)
        n = int(tokens[0].argmax()) - 1
        with torch.no_grad():
            return model.text.token_embedding(tokens)[0, 1 : 1 + n].float().cpu()
    return torch.randn(n_ctx, width, generator=generator) * 0.02




def coop_epochs(shots: float) -> int:
    """The CoOp paper's epoch budget by shots per class: 50 for 1-2 shots, 100 for 4-8, 200 for 16+."""
    if shots <= 2:
        return 50
    if shots <= 8:
        return 100
    return 200


class CoOpAdapter(Adapter):
    """Learned prompt context and the class text features it produces. State: ctx (M, width), text_weights (D, C);
    hparams position, logit_scale (and the training settings). `logits` takes projected, L2-normalised image
    features (N, D), like every feature adapter."""

    method = "coop"

    def __init__(
        self, classnames: Sequence[str], hparams: dict, *, ctx: torch.Tensor, text_weights: torch.Tensor
    ) -> None:
        super().__init__(classnames, hparams)
        self.register_buffer("ctx", ctx.detach().float().clone())  # (M, width)
        self.register_buffer("text_weights", text_weights.detach().float().clone())  # (D, C)

    def feature_logits(self, features: torch.Tensor) -> torch.Tensor:
        f = self.check_features(features, self.text_weights.shape[0]).to(self.text_weights.device)  # (N, D)
        return float(self.hparams["logit_scale"]) * f @ self.text_weights

    @torch.no_grad()
    def text_features(self, model, classnames: Sequence[str]) -> torch.Tensor:
        """(D, C') class text features of any `classnames` under the learned context (new classes included)."""
        builder = PromptBuilder(model, classnames, self.ctx.shape[0], self.hparams["position"])
        return builder.text_features(model, self.ctx.to(next(model.parameters()).device))

    def for_classes(self, classnames: Sequence[str]) -> CoOpAdapter:
        """The same learned context scoring other class names (CoOp in CoCoOp's base-to-new setting): their
        prompts `[SOS] ctx_1 .. ctx_M name . [EOS]` run once through the bound model's text tower. The result is
        bound to the same model; an unbound adapter (from `load`) says to call `bind(model)` first."""
        model = self.model
        if model is None:
            raise ValueError(
                "CoOpAdapter.for_classes runs the learned prompts of the new class names through the text tower: "
                "call adapter.bind(model) with the CLIP model it was fitted with first (clipforge.adapt.load does "
                "not bind)"
            )
        weights = self.text_features(model, tuple(classnames)).float().cpu()  # (D, C')
        return CoOpAdapter(classnames, self.hparams, ctx=self.ctx, text_weights=weights).bind(model)


class _FrozenTower:
    """Turns off requires_grad on every model parameter for the duration, and restores it: gradients then reach
    only the context, and the caller's model is left as it was."""

    def __init__(self, model) -> None:
        self.model, self.saved = model, []

    def __enter__(self):
        self.saved = [(p, p.requires_grad) for p in self.model.parameters()]
        for p, _ in self.saved:
            p.requires_grad_(False)
        return self

    def __exit__(self, *exc) -> None:
        for p, flag in self.saved:
            p.requires_grad_(flag)


def _train_prompts(model, optimizer, pool, labels, generator, schedule, logits_of) -> tuple[list, list]:
    """The CoOp/CoCoOp epoch loop on cached features with the text tower frozen: epoch e reads view e mod V of
    `pool` (V, N, D), shuffled mini-batches, Dassl's schedule; `logits_of(rows (B, D)) -> (B, C)` is the method.
    Returns the per-epoch training loss and accuracy (recorded in the adapter's hparams)."""
    epochs, batch_size, lr, warmup_epochs, warmup_lr = schedule
    losses, accuracies = [], []
    with _FrozenTower(model), torch.enable_grad():
        for epoch in range(epochs):
            set_lr(optimizer, warmup_cosine_lr(lr, epoch, epochs, warmup_epochs, warmup_lr))
            rows = pool[epoch % pool.shape[0]]
            total, correct, count = 0.0, 0, 0
            for batch in shuffled_batches(pool.shape[1], batch_size, generator):
                batch = batch.to(rows.device)
                logits = logits_of(rows[batch])  # (B, C)
                loss = F.cross_entropy(logits, labels[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * len(batch)
                correct += int((logits.argmax(dim=-1) == labels[batch]).sum())
                count += len(batch)
            losses.append(total / count)
            accuracies.append(correct / count)
    return losses, accuracies


@register("coop")
def fit_coop(
    ctx: FitContext,
    train: LabelledFeatures,
    val: LabelledFeatures | None,
    *,
    n_ctx: int = 16,
    ctx_init: str = "",
    position: str = "end",
    lr: float = 0.002,
    epochs: int | None = None,
    batch_size: int = 32,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    warmup_epochs: int = 1,
    warmup_lr: float = 1e-5,
    seed: int = 1,
) -> CoOpAdapter:
    """CoOp with the reference's settings (configs/trainers/CoOp, Dassl): SGD lr 0.002, momentum 0.9, weight decay
    5e-4, batch 32, cosine schedule with one constant warm-up epoch at 1e-5; 16 generic context vectors at the
    end, random N(0, 0.02) init, or the words of `ctx_init` (e.g. "a photo of a", then M = 4). `epochs=None` is
    the paper's budget for the shots per class (`coop_epochs`: 50 / 100 / 200). Trained on cached image features
    (`train.features`, epoch e reading augmented view e mod V when `train.views` is given); `val` is not read
    (CoOp keeps the last epoch). Needs `ctx.model` (the frozen text tower)."""
    model = ctx.model
    if model is None:
        raise ValueError("coop trains through the text tower: fit with a model (FitContext.model is None)")
    if isinstance(n_ctx, bool) or not isinstance(n_ctx, int) or n_ctx < 1:
        raise ValueError(f"coop: n_ctx must be an integer >= 1, got {n_ctx!r}")
    if len(train) == 0:
        raise ValueError("coop: the training set is empty; give at least one labelled feature per class")
    shots = len(train) / train.num_classes
    epochs = coop_epochs(shots) if epochs is None else epochs
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"coop: epochs must be an integer >= 0 or None, got {epochs!r}")
    if not (lr > 0 and math.isfinite(lr)):
        raise ValueError(f"coop: lr must be a positive finite number, got {lr}")
    generator = torch.Generator().manual_seed(seed)
    context0 = init_context(model, n_ctx, ctx_init, generator)  # (M, width)
    builder = PromptBuilder(model, train.classnames, context0.shape[0], position)
    device = builder.tokens.device
    context = torch.nn.Parameter(context0.to(device))
    pool = train.features[None] if train.views is None else train.views  # (V, N, D)
    pool = F.normalize(pool.to(device=device, dtype=torch.float32), dim=-1)
    y = train.labels.to(device).long()
    scale = float(ctx.logit_scale)
    optimizer = torch.optim.SGD([context], lr=lr, momentum=momentum, weight_decay=weight_decay)
    schedule = (epochs, batch_size, lr, warmup_epochs, warmup_lr)
    losses, accuracies = _train_prompts(
        model, optimizer, pool, y, generator, schedule,
        lambda rows: scale * rows @ builder.text_features(model, context),
    )
    with torch.no_grad():
        text_weights = builder.text_features(model, context.detach())
    hparams = {
        "n_ctx": int(context0.shape[0]),
        "ctx_init": ctx_init,
        "position": position,
        "lr": float(lr),
        "epochs": epochs,
        "batch_size": batch_size,
        "momentum": float(momentum),
        "weight_decay": float(weight_decay),
        "warmup_epochs": warmup_epochs,
        "warmup_lr": float(warmup_lr),
        "seed": seed,
        "logit_scale": scale,
        "train_loss": losses,
        "train_accuracy": accuracies,
    }
    return CoOpAdapter(train.classnames, hparams, ctx=context.detach(), text_weights=text_weights)


fit_coop.needs_model = True  # FitContext.model is required (the towers are used)


# --- CoCoOp --------------------------------------------------------------------------------------------------------

PROMPTS_PER_CHUNK = 512  # image x class prompts sent through the text tower at once when scoring


def meta_net(dim: int, width: int) -> torch.nn.Sequential:
    """CoCoOp's meta-net: Linear(D, D // 16) - ReLU - Linear(D // 16, width) (the reference's layer names)."""
    hidden = max(1, dim // 16)
    return torch.nn.Sequential(
        OrderedDict(
            linear1=torch.nn.Linear(dim, hidden), relu=torch.nn.ReLU(), linear2=torch.nn.Linear(hidden, width)
        )
    )


def conditioned_logits(
    model, builder: PromptBuilder, ctx: torch.Tensor, net: torch.nn.Sequential, features: torch.Tensor, scale: float
) -> torch.Tensor:
    """CoCoOp's logits: features (B, D) L2-normalised, ctx (M, width) -> (B, C) =
    scale * f_b . normalize(text(ctx + meta_net(f_b)))_c, one prompt set per image."""
    device = features.device
    hidden = F.relu(F.linear(features, net.linear1.weight.to(device), net.linear1.bias.to(device)))  # (B, D/16)
    shift = F.linear(hidden, net.linear2.weight.to(device), net.linear2.bias.to(device))  # (B, width)
    contexts = ctx.to(device)[None] + shift[:, None]  # (B, M, width)
    text = builder.per_image_text_features(model, contexts)  # (B, C, D)
    return scale * torch.einsum("bd,bcd->bc", features, text)


class CoCoOpAdapter(Adapter):
    """Learned context (M, width) and meta-net (D -> D/16 -> width); hparams n_ctx, position, embed_dim, width,
    logit_scale (and the training settings). `logits` takes projected, L2-normalised image features (N, D) like
    every feature adapter, but each image's prompts go through the text tower, so the adapter must be bound to
    the model first: `adapter.bind(model)` (done by `fit`; after `clipforge.adapt.load` bind it yourself). The
    model is not part of the saved state: only ctx and the meta-net are."""

    method = "cocoop"

    def __init__(
        self,
        classnames: Sequence[str],
        hparams: dict,
        *,
        ctx: torch.Tensor | None = None,
        net: torch.nn.Sequential | None = None,
    ) -> None:
        super().__init__(classnames, hparams)
        width, dim = int(self.hparams["width"]), int(self.hparams["embed_dim"])
        if ctx is None:
            ctx = torch.zeros(int(self.hparams["n_ctx"]), width)  # filled by load_state_dict
        self.register_buffer("ctx", ctx.detach().float().clone())  # (M, width)
        self.meta_net = net if net is not None else meta_net(dim, width)
        self._builder: PromptBuilder | None = None  # the class prompts embedded by the bound model's tokenizer

    def bind(self, model) -> CoCoOpAdapter:
        """Attach the CLIP model whose text tower produces the per-image prompts (the one it was fitted with);
        returns self. Its class prompts are embedded once here."""
        text_width = model.text.token_embedding.weight.shape[1]
        if text_width != self.ctx.shape[1]:
            raise ValueError(
                f"CoCoOpAdapter.bind: the model's text width is {text_width}, the learned context's is "
                f"{self.ctx.shape[1]}; bind the model the adapter was fitted with"
            )
        builder = PromptBuilder(model, self.classnames, self.ctx.shape[0], self.hparams["position"])
        super().bind(model)
        self._builder = builder
        return self

    def for_classes(self, classnames: Sequence[str]) -> CoCoOpAdapter:
        """The same context and meta-net scoring other class names (base-to-new), bound to the same model."""
        other = CoCoOpAdapter(classnames, self.hparams, ctx=self.ctx, net=self.meta_net)
        return other.bind(self.model) if self.model is not None else other

    def _require_model(self) -> tuple[Any, PromptBuilder]:
        if self.model is None or self._builder is None:
            raise ValueError(
                "CoCoOpAdapter needs the text tower to score images (each image gets its own prompts): call "
                "adapter.bind(model) with the CLIP model it was fitted with (clipforge.adapt.load does not bind)"
            )
        return self.model, self._builder

    def feature_logits(self, features: torch.Tensor) -> torch.Tensor:
        """(N, D) L2-normalised image features -> (N, C); prompts run in chunks of ~PROMPTS_PER_CHUNK."""
        model, builder = self._require_model()
        f = self.check_features(features, int(self.hparams["embed_dim"]))
        device = builder.tokens.device
        chunk = max(1, PROMPTS_PER_CHUNK // self.num_classes)
        scale = float(self.hparams["logit_scale"])
        parts = [
            conditioned_logits(model, builder, self.ctx, self.meta_net, rows.to(device), scale)
            for rows in f.split(chunk)
        ]
        return torch.cat(parts) if parts else f.new_zeros(0, self.num_classes)




@register("cocoop")
def fit_cocoop(
    ctx: FitContext,
    train: LabelledFeatures,
    val: LabelledFeatures | None,
    *,
    n_ctx: int = 4,
    ctx_init: str = "a photo of a",
    position: str = "end",
    lr: float = 0.002,
    epochs: int = 10,
    batch_size: int = 1,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    warmup_epochs: int = 1,
    warmup_lr: float = 1e-5,
    seed: int = 1,
) -> CoCoOpAdapter:
    """CoCoOp with the reference's settings (configs/trainers/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1): context
    initialised from "a photo of a" (M = 4; `ctx_init=""`: n_ctx random N(0, 0.02) vectors), SGD lr 0.002,
    momentum 0.9, weight decay 5e-4, batch 1, 10 epochs, cosine schedule after one constant warm-up epoch at
    1e-5. Trains ctx and the meta-net on cached image features (epoch e reads augmented view e mod V when
    `train.views` is given); `val` is not read (the last epoch is kept). Needs `ctx.model`; the returned adapter
    is bound to it. Each step runs batch_size * C prompts through the frozen text tower."""
    model = ctx.model
    if model is None:
        raise ValueError("cocoop trains through the text tower: fit with a model (FitContext.model is None)")
    check_count("n_ctx", n_ctx, 1, method="cocoop")
    check_count("epochs", epochs, 0, method="cocoop")
    check_count("batch_size", batch_size, 1, method="cocoop")
    if not (lr > 0 and math.isfinite(lr)):
        raise ValueError(f"cocoop: lr must be a positive finite number, got {lr}")
    if len(train) == 0:
        raise ValueError("cocoop: the training set is empty; give at least one labelled feature per class")
    generator = torch.Generator().manual_seed(seed)
    context0 = init_context(model, n_ctx, ctx_init, generator)  # (M, width)
    builder = PromptBuilder(model, train.classnames, context0.shape[0], position)
    device = builder.tokens.device
    with torch.random.fork_rng(devices=[]):  # the meta-net's default init, seeded, without touching global RNG
        torch.manual_seed(seed)
        net = meta_net(train.dim, context0.shape[1]).to(device)
    context = torch.nn.Parameter(context0.to(device))
    pool = train.features[None] if train.views is None else train.views  # (V, N, D)
    pool = F.normalize(pool.to(device=device, dtype=torch.float32), dim=-1)
    y = train.labels.to(device).long()
    scale = float(ctx.logit_scale)
    params = [context, *net.parameters()]
    optimizer = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    schedule = (epochs, batch_size, lr, warmup_epochs, warmup_lr)
    losses, accuracies = _train_prompts(
        model, optimizer, pool, y, generator, schedule,
        lambda rows: conditioned_logits(model, builder, context, net, rows, scale),
    )
    hparams = {
        "n_ctx": int(context0.shape[0]),
        "ctx_init": ctx_init,
        "position": position,
        "embed_dim": int(train.dim),
        "width": int(context0.shape[1]),
        "lr": float(lr),
        "epochs": epochs,
        "batch_size": batch_size,
        "momentum": float(momentum),
        "weight_decay": float(weight_decay),
        "warmup_epochs": warmup_epochs,
        "warmup_lr": float(warmup_lr),
        "seed": seed,
        "logit_scale": scale,
        "train_loss": losses,
        "train_accuracy": accuracies,
    }
    net = net.cpu().requires_grad_(False)
    adapter = CoCoOpAdapter(train.classnames, hparams, ctx=context.detach().cpu(), net=net)
    return adapter.bind(model)


fit_cocoop.needs_model = True  # FitContext.model is required, and the adapter is bound to it
