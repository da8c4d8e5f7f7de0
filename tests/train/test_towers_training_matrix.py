"""Every tower kind clipforge builds trains the same way: FSDP2 units, gradient checkpointing, tower locking.

Issue 11 added image towers (SigLIP's MAP head, EVA02, ConvNeXt, FastViT MCi) and Hugging Face text towers (XLM-R,
NLLB's M2M100 encoder, mT5) beside the original ViT and ModifiedResNet. The trainer treats them all alike, so each
kind is checked here on a tiny config:

- FSDP2: train/sharding.py finds units in both towers (each tower names its blocks) and `fully_shard` of those units
  on a 1-process gloo group trains: loss and gradients equal the unsharded model's;
- gradient checkpointing recomputes the blocks in backward (their forwards run again) with unchanged gradients;
- lock_image_tower / lock_text_tower freeze exactly what they say, and frozen parameters get no gradient.

A real 2-process FSDP2 run (ConvNeXt, the tower that crashed under --strategy=fsdp) is the last test.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import clipforge
from clipforge.models import CLIP, CLIPConfig, TextConfig, VisionConfig, get_model_config
from clipforge.models.freeze import image_tower_groups, text_tower_groups
from clipforge.train.sharding import _sharded_units, _tower_units
from support.hf_text import tiny_xlmr_fields
from support.tolerance import assert_close_rel

pytest.importorskip("transformers")

SMALL_VIT = VisionConfig(image_size=32, layers=1, width=32, patch_size=16, heads=2)


def _named(name: str) -> CLIP:
    return clipforge.create_model(name)


def _eva02() -> CLIP:
    base = get_model_config("EVA02-B-16")  # rotary positions, SwiGLU, sub-LN
    vision = dataclasses.replace(base.vision, image_size=32, patch_size=16, layers=2, width=32, heads=2)
    text = dataclasses.replace(base.text, width=32, heads=2, layers=1)
    return CLIP(base.replace(embed_dim=16, vision=vision, text=text))


def _fastvit_mci() -> CLIP:
    base = get_model_config("MobileCLIP2-S0")
    vision = VisionConfig(image_size=32, layers=(1, 1, 1, 1), width=8, patch_size=4, mlp_ratio=2.0, pool_type="avg",
                          fastvit="mci")  # fmt: skip
    text = dataclasses.replace(base.text, width=32, heads=2, layers=1)
    return CLIP(base.replace(embed_dim=16, vision=vision, text=text))


def _hf(fields: dict, pooler: str, proj: str) -> CLIP:
    text = TextConfig(context_length=16, hf_config=fields, hf_pooler_type=pooler, hf_proj_type=proj)
    return CLIP(CLIPConfig(embed_dim=16, vision=SMALL_VIT, text=text))


M2M_FIELDS = {  # NLLB's text tower: the M2M100 encoder, tiny
    "model_type": "m2m_100", "vocab_size": 128, "d_model": 32, "encoder_layers": 2, "decoder_layers": 1,
    "encoder_attention_heads": 4, "decoder_attention_heads": 4, "encoder_ffn_dim": 64, "decoder_ffn_dim": 64,
    "max_position_embeddings": 64, "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2, "scale_embedding": True,
    "is_encoder_decoder": True,
}  # fmt: skip
MT5_FIELDS = {  # mT5's encoder stack (T5Block layers, relative positions), tiny
    "model_type": "mt5", "vocab_size": 128, "d_model": 32, "d_kv": 8, "d_ff": 48, "num_layers": 2,
    "num_decoder_layers": 1, "num_heads": 4, "relative_attention_num_buckets": 8, "pad_token_id": 0,
    "eos_token_id": 1, "decoder_start_token_id": 0, "feed_forward_proj": "gated-gelu", "is_encoder_decoder": True,
}  # fmt: skip

BUILDERS = {
    "tiny-vit": lambda: _named("tiny-vit"),
    "tiny-rn": lambda: _named("tiny-rn"),
    "tiny-siglip-map": lambda: _named("tiny-siglip-map"),
    "tiny-convnext": lambda: _named("tiny-convnext"),
    "eva02": _eva02,
    "fastvit-mci": _fastvit_mci,
    "xlm-roberta": lambda: _hf(tiny_xlmr_fields(128), "mean_pooler", "mlp"),
    "nllb-m2m100": lambda: _hf(M2M_FIELDS, "cls_pooler", "linear"),
    "mt5": lambda: _hf(MT5_FIELDS, "mean_pooler", "mlp"),
}


# (image tower blocks, text tower blocks) of each tiny config: every block is its own FSDP2 unit.
UNITS = {
    "tiny-vit": (2, 2), "tiny-rn": (4, 2), "tiny-siglip-map": (2, 2), "tiny-convnext": (5, 2), "eva02": (2, 1),
    "fastvit-mci": (4, 1), "xlm-roberta": (1, 2), "nllb-m2m100": (1, 2), "mt5": (1, 2),
}  # fmt: skip


@pytest.fixture(scope="module")
def models() -> dict:
    """Each kind built once, seeded; tests work on deep copies."""
    built = {}
    for name, build in BUILDERS.items():
        torch.manual_seed(0)
        built[name] = build()
    return built


def _inputs(model: CLIP) -> tuple[torch.Tensor, torch.Tensor]:
    """3 images (3, 3, S, S) and 3 token rows (3, L) of ids >= 3 (no pad/special id in any family here)."""
    gen = torch.Generator().manual_seed(1)
    size, length = model.image_size, min(model.context_length, 16)
    return torch.randn(3, 3, size, size, generator=gen), torch.randint(3, 100, (3, length), generator=gen)


def _loss(model: CLIP, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """A scalar reaching both towers' every trained parameter (no temperature: it is not a tower's)."""
    return model.encode_image(images).pow(2).sum() + model.encode_text(tokens).pow(2).sum()


def _grads(model: CLIP) -> dict[str, torch.Tensor]:
    out = {}
    for name, param in model.named_parameters():
        if param.grad is not None:
            grad = param.grad
            out[name] = grad.full_tensor() if hasattr(grad, "full_tensor") else grad  # FSDP2: a DTensor
    return out


@pytest.fixture(scope="module")
def gloo_group(tmp_path_factory):
    """A 1-process gloo process group, so that `fully_shard` builds its (size-1) device mesh."""
    import torch.distributed as dist

    if dist.is_initialized():  # pragma: no cover - another test left one
        yield
        return
    store = tmp_path_factory.mktemp("gloo") / "store"
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_fsdp2_units_in_both_towers_and_sharded_training_matches(kind, models, gloo_group):
    from torch.distributed.fsdp import fully_shard

    plain = copy.deepcopy(models[kind]).train()
    image_units, text_units = _tower_units(plain.visual), _tower_units(plain.text)
    assert (len(image_units), len(text_units)) == UNITS[kind], f"{kind}: {len(image_units)}, {len(text_units)} units"
    units = _sharded_units(plain)
    assert units == image_units + text_units + [plain.visual, plain.text]
    assert len({id(u) for u in units}) == len(units), f"{kind}: a unit is listed twice"
    sharded = copy.deepcopy(plain)
    for unit in _sharded_units(sharded):
        fully_shard(unit)
    images, tokens = _inputs(plain)
    torch.manual_seed(2)  # the same dropout masks in both runs (HF encoders train with dropout)
    want = _loss(plain, images, tokens)
    want.backward()
    torch.manual_seed(2)
    got = _loss(sharded, images, tokens)
    got.backward()
    assert_close_rel(got.detach(), want.detach(), rel=1e-5, what=f"{kind} loss")
    expected, actual = _grads(plain), _grads(sharded)
    assert sorted(actual) == sorted(expected)
    for name, grad in expected.items():
        assert_close_rel(actual[name], grad, rel=1e-5, what=f"{kind} grad {name}")


def _count_unit_calls(model: CLIP) -> tuple[list[int], list]:
    """[image tower, text tower] module forwards inside the FSDP2 units, counted by hooks (and the hook handles)."""
    counts, handles = [0, 0], []
    for i, tower in enumerate((model.visual, model.text)):
        # Every module inside the units: transformers checkpoints a layer's `forward`, not its `__call__` (so FSDP2's
        # hooks stay outside), so only the layer's children run again. Pre-hooks: checkpoint's recomputation stops
        # early, once it has every saved tensor back, so a recomputed module may never return.
        for module in (m for unit in _tower_units(tower) for m in unit.modules()):
            handles.append(module.register_forward_pre_hook(lambda *_, i=i: counts.__setitem__(i, counts[i] + 1)))
    return counts, handles


@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_grad_checkpointing_recomputes_blocks_with_the_same_gradients(kind, models):
    images, tokens = _inputs(models[kind])
    runs = []
    for enable in (False, True):
        model = copy.deepcopy(models[kind]).train()
        model.set_grad_checkpointing(enable)
        counts, handles = _count_unit_calls(model)
        torch.manual_seed(2)  # same dropout masks: non-reentrant checkpointing replays the RNG state
        loss = _loss(model, images, tokens)
        loss.backward()
        for handle in handles:
            handle.remove()
        runs.append((loss.detach(), _grads(model), counts))
    (loss0, grads0, counts0), (loss1, grads1, counts1) = runs
    # Checkpointed blocks run their forward again in backward: each tower's unit count grows.
    assert counts1[0] > counts0[0] and counts1[1] > counts0[1], f"{kind}: calls {counts0} -> {counts1}"
    assert_close_rel(loss1, loss0, rel=1e-5, what=f"{kind} loss")
    assert sorted(grads1) == sorted(grads0)
    for name, grad in grads0.items():
        assert_close_rel(grads1[name], grad, rel=1e-5, what=f"{kind} grad {name}")


def _trainable(module: torch.nn.Module) -> set[str]:
    return {n for n, p in module.named_parameters() if p.requires_grad}


def _param_names(modules, tower: torch.nn.Module) -> set[str]:
    """Names (relative to `tower`) of the parameters of `modules` (modules or parameters; None skipped)."""
    ids = set()
    for item in modules:
        if isinstance(item, torch.nn.Parameter):
            ids.add(id(item))
        elif item is not None:
            ids |= {id(p) for p in item.parameters()}
    return {n for n, p in tower.named_parameters() if id(p) in ids}


def _backward_respects_locks(model: CLIP, kind: str) -> None:
    """Frozen parameters get no gradient; some trainable one does."""
    _loss(model, *_inputs(model)).backward()
    for name, param in model.named_parameters():
        if not param.requires_grad:
            assert param.grad is None, f"{kind}: frozen {name} got a gradient"
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_lock_image_tower_freezes_the_image_tower(kind, models):
    model = copy.deepcopy(models[kind]).train()
    text_all = _trainable(model.text)
    model.lock_image_tower(0)
    assert _trainable(model.visual) == set(), f"{kind}: lock_image_tower(0) left image parameters trainable"
    assert _trainable(model.text) == text_all
    _backward_respects_locks(model, kind)

    model = copy.deepcopy(models[kind])
    model.lock_image_tower(1)  # the last group (the projection side) trains, nothing else
    last = _param_names(image_tower_groups(model.visual)[-1], model.visual)
    assert last and _trainable(model.visual) == last, f"{kind}: {sorted(_trainable(model.visual))} != {sorted(last)}"
    assert len(last) < len(list(model.visual.parameters()))


@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_lock_text_tower_freezes_the_text_tower(kind, models):
    model = copy.deepcopy(models[kind]).train()
    image_all = _trainable(model.visual)
    model.lock_text_tower(0)
    hf = model.config.text.is_hf
    # open_clip's counting: a native tower freezes whole; a Hugging Face one keeps its projection trainable.
    keep = _param_names([model.text.proj], model.text) if hf else set()
    assert _trainable(model.text) == keep, f"{kind}: lock_text_tower(0) left {sorted(_trainable(model.text))}"
    assert _trainable(model.visual) == image_all
    _backward_respects_locks(model, kind)

    model = copy.deepcopy(models[kind])
    model.lock_text_tower(1)
    trainable = _trainable(model.text)
    assert trainable and len(trainable) < len(list(model.text.parameters()))
    if hf:  # groups [embeddings, layer 0, ..., layer n-1]: the last layer, what follows it and the projection train
        layers = model.text.shard_units()
        assert _param_names([layers[-1], model.text.proj], model.text) <= trainable
        frozen = _param_names([model.text.token_embedding, *layers[:-1]], model.text)
        assert not frozen & trainable, f"{kind}: {sorted(frozen & trainable)} should be frozen"
    else:
        last = _param_names(text_tower_groups(model.text)[-1], model.text)
        assert trainable == last, f"{kind}: {sorted(trainable)} != {sorted(last)}"


def test_convnext_fsdp2_on_two_processes_matches_one_process(tmp_path):
    """Two gloo CPU ranks shard a tiny ConvNeXt CLIP as the trainer does (every ConvNeXt block and text block, then
    both towers) and backpropagate their own batches; each rank's loss and FSDP2's averaged gradients equal one
    process's run over both batches."""
    worker_path = Path(__file__).parents[1] / "models" / "convnext_fsdp_worker.py"
    spec = importlib.util.spec_from_file_location("convnext_fsdp_worker", worker_path)
    worker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(worker)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tmp_path / "grads.safetensors"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    subprocess.run([sys.executable, str(worker_path), str(port), str(out)], check=True, timeout=240, env=env)
    sharded = load_file(out)
    model = worker.tiny_convnext().train()
    losses = [worker.loss(model, rank) for rank in (0, 1)]
    (sum(losses) / 2).backward()
    assert_close_rel(sharded["loss"], torch.stack([x.detach() for x in losses]), rel=1e-4, what="per-rank losses")
    params = dict(model.named_parameters())
    for name in worker.CHECKED:
        assert_close_rel(sharded[name], params[name].grad, rel=1e-4, what=name)
