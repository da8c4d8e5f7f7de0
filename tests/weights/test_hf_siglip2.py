"""Fixed-resolution transformers Siglip2Model folders (weights/hf_siglip2.py): parity with transformers' forward.

A tiny random Siglip2Config (vision width 64, 2 layers, patch 8, a 4x4 position grid -> 32px images; text width 48
-> projection 64) is saved with save_pretrained and loaded by clipforge.load_model. transformers gets the inputs
its Siglip2ImageProcessor builds for a square image at the native size (convert_image_to_patches: flattened
(row, col, channel) patches, every patch valid, spatial_shapes = (4, 4)); features are compared L2-normalised
(bar 1e-4, the issue's; measured ~3e-7) and so are the logits. NaFlex use (a processor max_num_patches other than
the square grid) and non-square grids are refused with errors naming the field.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")
siglip2_processing = pytest.importorskip("transformers.models.siglip2.image_processing_siglip2")

import clipforge  # noqa: E402
from clipforge.models import ConfigError  # noqa: E402
from clipforge.weights import hf_siglip2  # noqa: E402
from clipforge.weights.formats import CheckpointError  # noqa: E402

TOL = 1e-4
CONTEXT = 16
VOCAB = 300
PATCH, GRID = 8, 4
SIDE = PATCH * GRID


def _hf_config(num_patches: int = GRID * GRID) -> transformers.Siglip2Config:
    text_config = dict(
        vocab_size=VOCAB, hidden_size=48, intermediate_size=176, num_hidden_layers=2, num_attention_heads=3,
        max_position_embeddings=CONTEXT, projection_size=64, pad_token_id=0, eos_token_id=1,
    )
    vision_config = dict(
        hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, patch_size=PATCH,
        num_patches=num_patches,
    )
    return transformers.Siglip2Config(text_config=text_config, vision_config=vision_config)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    torch.manual_seed(0)
    model = transformers.Siglip2Model(_hf_config())
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # move every parameter off its init so a swapped key cannot go unnoticed
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    folder = tmp_path_factory.mktemp("siglip2")
    model.eval().save_pretrained(folder)
    return folder, model


def _naflex_inputs(images: torch.Tensor) -> dict[str, torch.Tensor]:
    """What Siglip2ImageProcessor hands the model for square images already at the native size."""
    patches = torch.stack([siglip2_processing.convert_image_to_patches(img, PATCH) for img in images])  # (B, N, P*P*C)
    n = len(images)
    return {
        "pixel_values": patches,
        "pixel_attention_mask": torch.ones(n, GRID * GRID, dtype=torch.int32),
        "spatial_shapes": torch.tensor([[GRID, GRID]] * n),
    }


def _inputs():
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(3, 3, SIDE, SIDE, generator=gen)
    tokens = torch.randint(2, VOCAB, (4, CONTEXT), generator=gen)
    tokens[:, -3:] = 0  # padded to the full length: the pooled last position is padding
    tokens[:, 10] = 1
    return images, tokens


def test_siglip2_folder_loads_with_parity(hf_dir):
    folder, ref = hf_dir
    model = clipforge.load_model(str(folder)).eval()
    cfg = model.config
    assert (cfg.vision.image_size, cfg.vision.patch_size, cfg.vision.pool_type) == (SIDE, PATCH, "map")
    assert cfg.text.pool_type == "last" and cfg.embed_dim == 64 and cfg.preprocess.size == SIDE
    images, tokens = _inputs()
    naflex = _naflex_inputs(images)
    with torch.no_grad():
        hf_img = F.normalize(ref.get_image_features(**naflex).pooler_output, dim=-1)
        hf_txt = F.normalize(ref.get_text_features(input_ids=tokens).pooler_output, dim=-1)
        hf_logits = ref(input_ids=tokens, **naflex).logits_per_image
        img = model.encode_image(images, normalize=True)
        txt = model.encode_text(tokens, normalize=True)
        logits, _ = model.get_logits(images, tokens)
    for name, ours, theirs in (("image", img, hf_img), ("text", txt, hf_txt)):
        diff = (ours - theirs).abs().max().item()
        assert diff <= TOL, f"{name} features differ by {diff:.2e} (> {TOL})"
    scale = max(hf_logits.abs().max().item(), 1.0)
    assert (logits - hf_logits).abs().max().item() <= TOL * scale


def test_patch_linear_is_the_conv_kernel():
    gen = torch.Generator().manual_seed(2)
    linear = torch.randn(5, PATCH * PATCH * 3, generator=gen)
    image = torch.randn(3, SIDE, SIDE, generator=gen)
    patches = siglip2_processing.convert_image_to_patches(image, PATCH)  # (N, P*P*C)
    conv = F.conv2d(image[None], hf_siglip2.linear_patch_to_conv(linear, PATCH), stride=PATCH)  # (1, 5, g, g)
    expected = (patches @ linear.T).T.reshape(1, 5, GRID, GRID)
    assert (conv - expected).abs().max().item() <= 1e-5 * expected.abs().max().item()


def test_loaded_model_trains(hf_dir):
    model = clipforge.load_model(str(hf_dir[0])).train()
    images, tokens = _inputs()
    logits, _ = model.get_logits(images[:2], tokens[:2])
    logits.sum().backward()
    assert model.visual.conv1.weight.grad is not None and model.visual.conv1.weight.grad.abs().sum() > 0


def _write_processor(folder, **fields):
    data = {"image_processor_type": "Siglip2ImageProcessor", "patch_size": PATCH, "max_num_patches": GRID * GRID,
            "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}
    data.update(fields)
    (folder / "preprocessor_config.json").write_text(json.dumps(data))


def test_fixed_size_processor_is_read(hf_dir, tmp_path):
    folder, _ = hf_dir
    for name in ("config.json", "model.safetensors"):
        (tmp_path / name).write_bytes((folder / name).read_bytes())
    _write_processor(tmp_path, image_mean=[0.4, 0.5, 0.6])
    cfg = clipforge.load_model(str(tmp_path)).config
    assert cfg.preprocess.mean == (0.4, 0.5, 0.6) and cfg.preprocess.size == SIDE


def test_naflex_processor_is_refused(hf_dir, tmp_path):
    folder, _ = hf_dir
    for name in ("config.json", "model.safetensors"):
        (tmp_path / name).write_bytes((folder / name).read_bytes())
    _write_processor(tmp_path, max_num_patches=256)
    with pytest.raises(Exception, match="preprocessor_config.json.*max_num_patches=256.*NaFlex"):
        clipforge.load_model(str(tmp_path))


def test_non_square_grid_is_refused():
    hf = _hf_config().to_dict()
    hf["vision_config"]["num_patches"] = 12
    with pytest.raises(ConfigError, match="num_patches=12 is not a positive square"):
        hf_siglip2.config_from_hf_siglip2(hf)


def test_conv_patch_weight_is_refused(hf_dir):
    folder, ref = hf_dir
    cfg = hf_siglip2.read_hf_siglip2_config(folder / "config.json")
    sd = dict(ref.state_dict())
    sd[hf_siglip2.PATCH_KEY] = torch.zeros(64, 3, PATCH, PATCH)
    with pytest.raises(CheckpointError, match="Linear.*SiglipModel"):
        hf_siglip2.hf_siglip2_to_clipforge(sd, cfg)


def test_get_tokenizer_reads_the_folders_tokenizer_json(hf_dir, tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    folder, _ = hf_dir
    for name in ("config.json", "model.safetensors"):
        (tmp_path / name).write_bytes((folder / name).read_bytes())
    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, **{c: 4 + i for i, c in enumerate("abcdefghij▁")}}
    tok = tokenizers.Tokenizer(tokenizers.models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.normalizer = tokenizers.normalizers.Replace(" ", "▁")
    # The real google/siglip2-* files: post-processor `$A <eos>`, right padding (the ids follow the files).
    tok.post_processor = tokenizers.processors.TemplateProcessing(single="$A <eos>", special_tokens=[("<eos>", 1)])
    tok.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"padding_side": "right", "pad_token": "<pad>"}))
    tokenizer = clipforge.get_tokenizer(f"local-dir:{tmp_path}")
    ids = tokenizer(["A CAB"])  # (1, CONTEXT): lowercased (Siglip2Tokenizer), end token, <pad>
    assert ids.tolist() == [[4, 14, 6, 4, 5, 1] + [0] * (CONTEXT - 6)]
    auto = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    assert ids.tolist() == auto(["A CAB"], padding="max_length", max_length=CONTEXT).input_ids
    model = clipforge.load_model(str(tmp_path)).eval()
    with torch.no_grad():
        assert model.encode_text(ids).shape == (1, 64)
