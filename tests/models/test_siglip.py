"""SigLIP-shaped towers (vision pool_type "map", no class token, no projection; gelu_tanh): training paths.

The MAP head is checked against transformers' SiglipMultiheadAttentionPoolingHead (same weights); the whole
model's parity with SiglipModel is in tests/weights/test_hf_siglip.py.
"""

from __future__ import annotations

import pytest
import torch

import clipforge
from clipforge.models import ConfigError, VisionConfig
from clipforge.models.map_head import MAPHead
from clipforge.train.losses import siglip_loss
from support.tolerance import assert_close_rel


def _batch(model, n: int = 3):
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(n, 3, model.image_size, model.image_size, generator=gen)
    tokens = torch.randint(3, 1000, (n, model.context_length), generator=gen)
    return images, tokens


def _siglip_loss(model, images, tokens):
    out = model(images, tokens)
    return siglip_loss(out.image_features, out.text_features, out.logit_scale, out.logit_bias)


def test_map_head_matches_transformers_pooling_head():
    transformers = pytest.importorskip("transformers")
    from transformers.models.siglip.modeling_siglip import SiglipMultiheadAttentionPoolingHead

    cfg = transformers.SiglipVisionConfig(hidden_size=32, intermediate_size=80, num_attention_heads=4)
    torch.manual_seed(0)
    ref = SiglipMultiheadAttentionPoolingHead(cfg).eval()
    ours = MAPHead(32, 4, 80 / 32, "gelu_tanh", cfg.layer_norm_eps).eval()
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, 9, 32)
    with torch.no_grad():
        assert_close_rel(ours(x), ref(x), 1e-5, "MAP head")


def test_siglip_forward_backward_every_parameter_gets_gradient():
    model = clipforge.create_model("tiny-siglip-map").train()
    assert model.visual.class_embedding is None and model.visual.proj is None
    assert isinstance(model.visual.ln_pre, torch.nn.Identity) and model.visual.conv1.bias is not None
    _siglip_loss(model, *_batch(model)).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"parameters without a gradient: {missing}"


def test_siglip_grad_checkpointing_same_loss_and_grads():
    torch.manual_seed(0)
    model = clipforge.create_model("tiny-siglip-map").train()
    batch = _batch(model)
    _siglip_loss(model, *batch).backward()
    plain = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_grad_checkpointing(True)
    _siglip_loss(model, *batch).backward()
    for name, p in model.named_parameters():
        assert_close_rel(p.grad, plain[name], 1e-5, name)


def test_siglip_compiled_forward_matches_eager():
    model = clipforge.create_model("tiny-siglip-map").eval()
    images, _ = _batch(model, 2)
    compiled = torch.compile(model.visual)
    with torch.no_grad():
        assert_close_rel(compiled(images), model.visual(images), 1e-5, "compiled image features")


def test_map_pool_config_checks():
    with pytest.raises(ConfigError, match="class token"):
        VisionConfig(image_size=32, patch_size=8, width=64, layers=1, class_token=False, pool_type="tok")
    with pytest.raises(ConfigError, match="no_proj"):
        clipforge.create_model("tiny-siglip-map", embed_dim=32)
