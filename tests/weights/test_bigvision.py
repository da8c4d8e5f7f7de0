"""big_vision SigLIP .npz checkpoints (weights/bigvision.py) against transformers' SiglipModel.

No real big_vision file can be downloaded here, so `_to_big_vision` builds one by hand: it applies the inverse of
every reshape in transformers' `convert_siglip_to_hf.py` to a random (perturbed) SiglipModel, producing the
flat `params/img/...`, `params/txt/...`, `params/t`, `params/b` arrays big_vision saves. clipforge then reads the
.npz and must (a) hold exactly the tensors of that SiglipModel (hf_siglip's map applied to its state dict) and
(b) match SiglipModel's features (bar 1e-4 on L2-normalised features; measured ~3e-7). The scanned layout
(so400m files), the prefix-free layout, a text tower without head, and the refusals are checked too.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")

import clipforge  # noqa: E402
from clipforge.cli import convert as convert_cli  # noqa: E402
from clipforge.weights import hf_siglip  # noqa: E402
from clipforge.weights.formats import CheckpointError, detect_checkpoint_format, read_tensors  # noqa: E402

TOL = 1e-4
CONTEXT = 16
VOCAB = 300
V_WIDTH, V_HEADS, T_WIDTH, T_HEADS = 64, 4, 48, 3


def _reference() -> transformers.SiglipModel:
    text = dict(
        vocab_size=VOCAB, hidden_size=T_WIDTH, intermediate_size=176, num_hidden_layers=2,
        num_attention_heads=T_HEADS, max_position_embeddings=CONTEXT, projection_size=V_WIDTH,
    )
    vision = dict(
        hidden_size=V_WIDTH, intermediate_size=96, num_hidden_layers=2, num_attention_heads=V_HEADS,
        image_size=32, patch_size=8,
    )
    torch.manual_seed(0)
    model = transformers.SiglipModel(transformers.SiglipConfig(text_config=text, vision_config=vision))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # move every parameter off its init so a swapped key cannot go unnoticed
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return model.eval()


def _to_big_vision(
    sd: dict[str, torch.Tensor], prefix: str = "params/", t_heads: int = T_HEADS
) -> dict[str, np.ndarray]:
    """The inverse of transformers' convert_siglip_to_hf.py: a SiglipModel state dict -> big_vision arrays."""
    out: dict[str, np.ndarray] = {}

    def put(name: str, tensor: torch.Tensor) -> None:
        out[prefix + name] = tensor.detach().numpy().copy()

    def dense(bv: str, hf: str) -> None:
        put(f"{bv}/kernel", sd[f"{hf}.weight"].T)  # (out, in) -> Flax (in, out)
        put(f"{bv}/bias", sd[f"{hf}.bias"])

    def norm(bv: str, hf: str) -> None:
        put(f"{bv}/scale", sd[f"{hf}.weight"])
        put(f"{bv}/bias", sd[f"{hf}.bias"])

    def attention(bv: str, weight: torch.Tensor, bias: torch.Tensor, part: str, heads: int) -> None:
        width = weight.shape[1]
        put(f"{bv}/{part}/kernel", weight.T.reshape(width, heads, -1))  # (H*Dh, D) -> (D, H, Dh)
        put(f"{bv}/{part}/bias", bias.reshape(heads, -1))

    for tower, hf, heads in (("img/Transformer", "vision_model", V_HEADS), ("txt/Encoder_0", "text_model", t_heads)):
        for i in range(2):
            bv, h = f"{tower}/encoderblock_{i}", f"{hf}.encoder.layers.{i}"
            norm(f"{bv}/LayerNorm_0", f"{h}.layer_norm1")
            norm(f"{bv}/LayerNorm_1", f"{h}.layer_norm2")
            dense(f"{bv}/MlpBlock_0/Dense_0", f"{h}.mlp.fc1")
            dense(f"{bv}/MlpBlock_0/Dense_1", f"{h}.mlp.fc2")
            for part, short in (("query", "q"), ("key", "k"), ("value", "v")):
                w, b = sd[f"{h}.self_attn.{short}_proj.weight"], sd[f"{h}.self_attn.{short}_proj.bias"]
                attention(f"{bv}/MultiHeadDotProductAttention_0", w, b, part, heads)
            w = sd[f"{h}.self_attn.out_proj.weight"]
            put(f"{bv}/MultiHeadDotProductAttention_0/out/kernel", w.T.reshape(heads, -1, w.shape[0]))
            put(f"{bv}/MultiHeadDotProductAttention_0/out/bias", sd[f"{h}.self_attn.out_proj.bias"])
        norm(f"{tower}/encoder_norm", f"{hf}.post_layernorm" if hf == "vision_model" else f"{hf}.final_layer_norm")
    put("img/embedding/kernel", sd["vision_model.embeddings.patch_embedding.weight"].permute(2, 3, 1, 0))  # HWIO
    put("img/embedding/bias", sd["vision_model.embeddings.patch_embedding.bias"])
    put("img/pos_embedding", sd["vision_model.embeddings.position_embedding.weight"][None])
    head = "vision_model.head"
    put("img/MAPHead_0/probe", sd[f"{head}.probe"])
    norm("img/MAPHead_0/LayerNorm_0", f"{head}.layernorm")
    dense("img/MAPHead_0/MlpBlock_0/Dense_0", f"{head}.mlp.fc1")
    dense("img/MAPHead_0/MlpBlock_0/Dense_1", f"{head}.mlp.fc2")
    for part, w, b in zip(
        ("query", "key", "value"),
        sd[f"{head}.attention.in_proj_weight"].chunk(3),
        sd[f"{head}.attention.in_proj_bias"].chunk(3),
        strict=True,
    ):
        attention("img/MAPHead_0/MultiHeadDotProductAttention_0", w, b, part, V_HEADS)
    w = sd[f"{head}.attention.out_proj.weight"]
    put("img/MAPHead_0/MultiHeadDotProductAttention_0/out/kernel", w.T.reshape(V_HEADS, -1, V_WIDTH))
    put("img/MAPHead_0/MultiHeadDotProductAttention_0/out/bias", sd[f"{head}.attention.out_proj.bias"])
    put("txt/Embed_0/embedding", sd["text_model.embeddings.token_embedding.weight"])
    put("txt/pos_embedding", sd["text_model.embeddings.position_embedding.weight"][None])
    dense("txt/head", "text_model.head")
    put("t", sd["logit_scale"])
    put("b", sd["logit_bias"])
    return out


def _scanned(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The so400m layout: `encoderblock/...` arrays with the layer stacked on axis 0."""
    out: dict[str, np.ndarray] = {}
    stacks: dict[str, list[np.ndarray]] = {}
    for key, value in arrays.items():
        if "/encoderblock_" in key:
            head, tail = key.split("/encoderblock_")
            stacks.setdefault(f"{head}/encoderblock/{tail.split('/', 1)[1]}", []).append(value)
        else:
            out[key] = value
    out.update({k: np.stack(v) for k, v in stacks.items()})
    return out


@pytest.fixture(scope="module")
def reference():
    model = _reference()
    return model, {k: v.detach() for k, v in model.state_dict().items() if "position_ids" not in k}


def _write(tmp_path, arrays, name="webli_en_tiny.npz"):
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


def _check_features(model, ref):
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(3, 3, 32, 32, generator=gen)
    tokens = torch.randint(3, VOCAB, (4, CONTEXT), generator=gen)
    with torch.no_grad():
        hf_img = ref.get_image_features(pixel_values=images)
        hf_txt = ref.get_text_features(input_ids=tokens)
        hf_img = F.normalize(getattr(hf_img, "pooler_output", hf_img), dim=-1)
        hf_txt = F.normalize(getattr(hf_txt, "pooler_output", hf_txt), dim=-1)
        img = model.encode_image(images, normalize=True)
        txt = model.encode_text(tokens, normalize=True)
    diffs = {"image": (img - hf_img).abs().max().item(), "text": (txt - hf_txt).abs().max().item()}
    assert max(diffs.values()) <= TOL, diffs
    return diffs


def _expected_clipforge(model, sd):
    return hf_siglip.hf_siglip_to_clipforge(sd, model.config)


@pytest.mark.parametrize("layout", ["params", "no-prefix", "scanned"])
def test_npz_loads_exactly_and_matches_siglip(tmp_path, reference, layout):
    ref, sd = reference
    arrays = _to_big_vision(sd, prefix="" if layout == "no-prefix" else "params/")
    path = _write(tmp_path, _scanned(arrays) if layout == "scanned" else arrays)
    assert detect_checkpoint_format(path) == "npz"
    model = clipforge.load_model(str(path)).eval()
    cfg = model.config
    assert (cfg.vision.width, cfg.vision.layers, cfg.vision.num_heads, cfg.vision.image_size) == (64, 2, 4, 32)
    assert (cfg.text.width, cfg.text.num_heads, cfg.text.vocab_size, cfg.text.context_length) == (48, 3, VOCAB, 16)
    assert cfg.vision.pool_type == "map" and cfg.text.pool_type == "last" and cfg.embed_dim == 64
    expected = _expected_clipforge(model, sd)
    got = model.state_dict()
    assert got.keys() == expected.keys()
    for key, value in expected.items():  # a pure relayout: every tensor exactly as in the SiglipModel
        assert torch.equal(got[key], value), key
    _check_features(model, ref)


def test_text_tower_without_head_gets_identity(tmp_path):
    """The i18n b16-256 file has no txt/head (text width == embed dim): read as an identity projection."""
    text = dict(vocab_size=VOCAB, hidden_size=V_WIDTH, intermediate_size=96, num_hidden_layers=2,
                num_attention_heads=V_HEADS, max_position_embeddings=CONTEXT)
    vision = dict(hidden_size=V_WIDTH, intermediate_size=96, num_hidden_layers=2, num_attention_heads=V_HEADS,
                  image_size=32, patch_size=8)
    model = transformers.SiglipModel(transformers.SiglipConfig(text_config=text, vision_config=vision))
    sd = {k: v.detach() for k, v in model.state_dict().items() if "position_ids" not in k}
    arrays = _to_big_vision(sd, t_heads=V_HEADS)
    del arrays["params/txt/head/kernel"], arrays["params/txt/head/bias"]
    state = clipforge.load_model(str(_write(tmp_path, arrays))).state_dict()
    assert torch.equal(state["text.text_projection.weight"], torch.eye(V_WIDTH))
    assert torch.equal(state["text.text_projection.bias"], torch.zeros(V_WIDTH))


def test_cli_converts_npz_to_hf_and_transformers_loads_it(tmp_path, reference, capsys):
    ref, sd = reference
    path = _write(tmp_path, _to_big_vision(sd))
    assert convert_cli.main([str(path), str(tmp_path / "hf"), "--to", "hf"]) == 0
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["model_type"] == "siglip"
    back = transformers.SiglipModel.from_pretrained(tmp_path / "hf").eval()
    for key, value in sd.items():
        assert torch.equal(back.state_dict()[key], value), key
    assert convert_cli.main([str(path), str(tmp_path / "cf")]) == 0
    _check_features(clipforge.load_model(str(tmp_path / "cf")).eval(), ref)


def test_read_tensors_gives_raw_arrays(tmp_path, reference):
    _, sd = reference
    tensors = read_tensors(_write(tmp_path, _to_big_vision(sd)))
    assert tensors["params/img/embedding/kernel"].shape == (8, 8, 3, V_WIDTH)


def test_object_arrays_are_refused_not_unpickled(tmp_path, reference):
    _, sd = reference
    arrays = _to_big_vision(sd)
    arrays["params/evil"] = np.array([{"a": 1}], dtype=object)
    with pytest.raises(CheckpointError, match="never unpickles"):
        clipforge.load_model(str(_write(tmp_path, arrays)))


def test_unknown_arrays_are_named(tmp_path, reference):
    _, sd = reference
    arrays = _to_big_vision(sd)
    arrays["params/img/head/kernel"] = np.zeros((V_WIDTH, 10), np.float32)
    with pytest.raises(CheckpointError, match="img/head/kernel"):
        clipforge.load_model(str(_write(tmp_path, arrays)))


def test_missing_array_is_named(tmp_path, reference):
    _, sd = reference
    arrays = _to_big_vision(sd)
    del arrays["params/img/MAPHead_0/MultiHeadDotProductAttention_0/key/bias"]
    with pytest.raises(CheckpointError, match="MAPHead_0/MultiHeadDotProductAttention_0/key/bias"):
        clipforge.load_model(str(_write(tmp_path, arrays)))


def test_naflex_dense_patch_embedding_is_refused_naming_siglip(tmp_path, reference):
    _, sd = reference
    arrays = _to_big_vision(sd)
    arrays["params/img/embedding/kernel"] = np.zeros((8 * 8 * 3, V_WIDTH), np.float32)
    with pytest.raises(CheckpointError, match="SigLIP 2 NaFlex.*closest supported family is SigLIP"):
        clipforge.load_model(str(_write(tmp_path, arrays)))
