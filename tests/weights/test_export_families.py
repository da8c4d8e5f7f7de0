"""Writing issue 11's families where the target format can hold them: SigLIP and EVA02 as open_clip folders (timm
trunk names + a model config naming the timm tower), AltCLIP and Chinese-CLIP as transformers folders; what no
format can hold stays refused by `check_writable` with its reason.

Each writer is checked by the reference library loading the written folder itself (open_clip's `local-dir:`
loading, transformers' `from_pretrained`): features within 1e-4 of clipforge's on L2-normalised fp32 features
(random weights), and clipforge reading the folder back gets bitwise the weights it wrote.

open_clip names a timm tower and cannot take a shape, so the small open_clip models here are a named tower's
recipe shrunk: the test swaps the timm name's table row (clipforge's side) and wraps `timm.create_model` to build
the same small shape (open_clip's side), as tests/models/test_openclip_siglip.py does.
"""

import dataclasses

import pytest
import torch

from clipforge.models import CLIP, ConfigError, get_model_config
from clipforge.weights import openclip_siglip, openclip_timm
from clipforge.weights.families import check_writable, writable_refusal
from clipforge.weights.formats import CheckpointError
from clipforge.weights.loading import load_model, save_model

open_clip = pytest.importorskip("open_clip")
timm = pytest.importorskip("timm")

TOL = 1e-4
SMALL_TRUNK = dict(img_size=64, depth=2, embed_dim=64, num_heads=4)
SMALL_ROW = dict(image_size=64, patch_size=16, width=64, layers=2, heads=4)


def _randomised(cfg):
    """A CLIP of `cfg` with every parameter moved off its initial value (zero biases, unit norms would hide maps)."""
    torch.manual_seed(0)
    model = CLIP(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model


def _shrink_timm(monkeypatch, table, name, row):
    """clipforge's table says timm `name` is the small `row`; timm builds `name` at that small shape."""
    monkeypatch.setitem(table, name, {**table[name], **row})
    create = timm.create_model
    monkeypatch.setattr(timm, "create_model", lambda model_name, **kw: create(model_name, **{**kw, **SMALL_TRUNK}))


def _small_siglip():
    base = get_model_config("ViT-B-16-SigLIP")
    vision = dataclasses.replace(base.vision, **SMALL_ROW)
    text = dataclasses.replace(base.text, width=32, heads=2, layers=2, vocab_size=1000)
    return base.replace(embed_dim=64, vision=vision, text=text)


def _small_eva():
    base = get_model_config("EVA02-B-16")
    vision = dataclasses.replace(base.vision, **SMALL_ROW)
    text = dataclasses.replace(base.text, width=32, heads=2, layers=2, vocab_size=1000)
    return base.replace(embed_dim=32, vision=vision, text=text)


def _features(model, pad_id):
    g = torch.Generator().manual_seed(0)
    images = torch.randn(3, 3, 64, 64, generator=g)
    tokens = torch.randint(3, 1000, (4, model.context_length if hasattr(model, "context_length") else 64), generator=g)
    tokens[:, 20:] = pad_id
    tokens[:, 19] = 2  # an end-of-text id for last-token pooling
    with torch.no_grad():
        return model.encode_image(images, normalize=True), model.encode_text(tokens, normalize=True)


def _zero_key_bias(model):
    """EVA has no key bias; clipforge's packed in_proj_bias has one (zeros in a model read from EVA)."""
    with torch.no_grad():
        for block in model.visual.transformer.resblocks:
            width = block.attn.in_proj_bias.shape[0] // 3
            block.attn.in_proj_bias[width : 2 * width] = 0


def _check_openclip_round_trip(model, folder, pad_id):
    # open_clip's own loading of the folder: config from open_clip_config.json, weights from the folder
    theirs = open_clip.create_model(f"local-dir:{folder}", require_pretrained=True)
    ref_i, ref_t = _features(model, pad_id)
    got_i, got_t = _features(theirs.eval(), pad_id)
    di, dt = (got_i - ref_i).abs().max().item(), (got_t - ref_t).abs().max().item()
    print(f"open_clip loads the written folder: max abs diff image {di:.2e} text {dt:.2e}")
    assert di <= TOL and dt <= TOL, f"max abs diff image {di:.2e} text {dt:.2e}"
    back = load_model(folder)
    assert back.config == model.config
    ours, again = model.state_dict(), back.state_dict()
    assert sorted(ours) == sorted(again)
    for key, value in ours.items():
        assert torch.equal(again[key], value), key
    # and the other way: the open_clip folder read by clipforge and written again is the same file content
    from safetensors.torch import load_file

    again_dir = save_model(back, folder.parent / "again", "openclip")
    first, second = (load_file(d / "open_clip_model.safetensors") for d in (folder, again_dir))
    assert sorted(first) == sorted(second) == sorted(theirs.state_dict())
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert (folder / "open_clip_config.json").read_bytes() == (again_dir / "open_clip_config.json").read_bytes()
    return theirs


@pytest.mark.parametrize(
    ("name", "fmt", "writable"),
    [("ViT-B-16-SigLIP", "openclip", True), ("EVA02-L-14", "openclip", True), ("MobileCLIP-B", "openclip", False),
     ("MobileCLIP2-L-14", "openclip", False), ("EVA02-B-16", "hf", True)],
)
def test_check_writable_accepts_exactly_the_named_timm_towers(name, fmt, writable):
    """SigLIP / EVA02 named towers are writable as open_clip; MobileCLIP's ViTs stay refused with their reason
    (the hf writer checks EVA02 itself: transformers' CLIPModel cannot hold it, tests/weights/test_unsupported_*)."""
    why = writable_refusal(get_model_config(name), fmt)
    assert (why is None) == writable, why
    if not writable:
        assert "--to clipforge" in why


def test_siglip_writes_an_open_clip_folder_open_clip_loads(monkeypatch, tmp_path):
    _shrink_timm(monkeypatch, openclip_siglip.TIMM_SIGLIP_TOWERS, "vit_base_patch16_siglip_224", SMALL_ROW)
    model = _randomised(_small_siglip())
    check_writable(model.config, "openclip")
    save_model(model, tmp_path / "oc", "openclip")
    theirs = _check_openclip_round_trip(model, tmp_path / "oc", pad_id=1)
    assert isinstance(theirs, open_clip.CustomTextCLIP)
    assert torch.equal(theirs.logit_bias.detach().reshape(()), model.logit_bias.detach())


def test_eva02_writes_an_open_clip_folder_open_clip_loads(monkeypatch, tmp_path):
    _shrink_timm(monkeypatch, openclip_timm.TIMM_EVA_TOWERS, "eva02_base_patch16_clip_224", SMALL_ROW)
    model = _randomised(_small_eva())
    with pytest.raises(ConfigError, match="nonzero key bias"):  # rope makes a key bias matter: refused, not dropped
        save_model(model, tmp_path / "oc", "openclip")
    assert not (tmp_path / "oc").exists()  # refused before any file was written
    _zero_key_bias(model)
    save_model(model, tmp_path / "oc", "openclip")
    _check_openclip_round_trip(model, tmp_path / "oc", pad_id=0)


def test_eva02_without_projection_bias_uses_open_clips_head_proj(monkeypatch, tmp_path):
    """A bias-free projection is open_clip's `timm_proj: "linear"` head (visual.head.proj), not the trunk's head."""
    _shrink_timm(monkeypatch, openclip_timm.TIMM_EVA_TOWERS, "eva02_base_patch16_clip_224", SMALL_ROW)
    cfg = _small_eva()
    model = _randomised(cfg.replace(vision=dataclasses.replace(cfg.vision, proj_bias=False)))
    _zero_key_bias(model)
    save_model(model, tmp_path / "oc", "openclip")
    theirs = _check_openclip_round_trip(model, tmp_path / "oc", pad_id=0)
    assert "visual.head.proj.weight" in theirs.state_dict()


@pytest.mark.parametrize(
    "name", ["ViT-B-16-SigLIP", "ViT-SO400M-14-SigLIP-378", "ViT-B-32-SigLIP2-256", "EVA02-B-16", "EVA02-L-14-336"]
)
def test_full_size_written_config_is_open_clips(name):
    """The written model config builds open_clip's own model for that name (meta device): same keys, same shapes;
    clipforge reads the config back to the named config."""
    from clipforge.weights.openclip import config_from_openclip, config_to_openclip, openclip_state_dict

    cfg = get_model_config(name)
    written = config_to_openclip(cfg)
    model_cfg = dict(written["model_cfg"])
    reference = open_clip.get_model_config(name)["vision_cfg"]
    assert model_cfg["vision_cfg"] == {**reference, "image_size": cfg.vision.image_size}
    assert model_cfg.pop("custom_text")
    with torch.device("meta"):
        theirs = {k: tuple(v.shape) for k, v in open_clip.CustomTextCLIP(**model_cfg).state_dict().items()}
        ours = {k: tuple(v.shape) for k, v in openclip_state_dict(cfg, CLIP(cfg).state_dict()).items()}
    assert ours == theirs
    assert config_from_openclip(written["model_cfg"], written["preprocess_cfg"]) == cfg


def test_siglip_and_eva_shapes_no_timm_model_has_are_refused_naming_the_known_ones():
    siglip = _small_siglip()
    assert "vit_base_patch16_siglip_224" in writable_refusal(siglip, "openclip")
    with pytest.raises(CheckpointError, match="no timm model open_clip can build"):
        check_writable(_small_eva(), "openclip")


# ---------------------------------------------------------------------------------------------- transformers

transformers = pytest.importorskip("transformers")
TEXTS = ["a photo of a cat", "一只猫坐在红色的桌子上", "the red table", ""]
SMALL_VISION = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8
)


def _perturbed(model):
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return model.eval()


def _chinese_clip_folder(root):
    """A small transformers ChineseCLIPModel folder with a BERT WordPiece tokenizer (vocab.txt)."""
    import json

    root.mkdir(parents=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "photo", "of", "cat", "the", "red", "table"]
    vocab += list("一只猫坐在红色的桌子上")
    (root / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    (root / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "BertTokenizer", "do_lower_case": True, "model_max_length": 16})
    )
    text = dict(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                intermediate_size=64, max_position_embeddings=40)
    config = transformers.ChineseCLIPConfig(text_config=text, vision_config=SMALL_VISION, projection_dim=16)
    torch.manual_seed(0)
    _perturbed(transformers.ChineseCLIPModel(config)).save_pretrained(root)
    return root


def _altclip_folder(root):
    """A small transformers AltCLIPModel folder with a tiny XLM-R style tokenizer (tokenizer.json)."""
    from support.hf_text import make_hf_text_folder

    folder, fields = make_hf_text_folder(root)
    text = dict(vocab_size=fields["vocab_size"], hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                intermediate_size=64, max_position_embeddings=80, type_vocab_size=1, project_dim=24, pad_token_id=1)
    config = transformers.AltCLIPConfig(text_config=text, vision_config=SMALL_VISION, projection_dim=16)
    torch.manual_seed(0)
    _perturbed(transformers.AltCLIPModel(config)).save_pretrained(folder)
    return folder


@pytest.mark.parametrize(
    ("make", "cls", "tokenizer_file"),
    [(_chinese_clip_folder, "ChineseCLIPModel", "vocab.txt"), (_altclip_folder, "AltCLIPModel", "tokenizer.json")],
)
def test_hf_text_tower_models_write_the_transformers_folder_they_came_from(tmp_path, make, cls, tokenizer_file):
    import clipforge
    from support.tolerance import assert_close_rel

    source = make(tmp_path / "source")
    model = clipforge.load_model(str(source)).eval()
    check_writable(model.config, "hf")
    out = save_model(model, tmp_path / "written", "hf")
    assert (out / tokenizer_file).is_file() and (out / "preprocessor_config.json").is_file()
    theirs, info = getattr(transformers, cls).from_pretrained(out, output_loading_info=True)  # loads the folder
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    theirs.eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    tokens = clipforge.get_tokenizer(model)(TEXTS)
    ids = hf_tok(TEXTS, padding="max_length", max_length=tokens.shape[1], truncation=True, return_tensors="pt")
    assert torch.equal(tokens, ids["input_ids"])  # the copied tokenizer files tokenize as the source's
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want_i = torch.nn.functional.normalize(_pooled(theirs.get_image_features(pixel_values=images)), dim=-1)
        want_t = torch.nn.functional.normalize(_pooled(theirs.get_text_features(**ids)), dim=-1)
        got_i, got_t = model.encode_image(images, normalize=True), model.encode_text(tokens, normalize=True)
    di, dt = (got_i - want_i).abs().max().item(), (got_t - want_t).abs().max().item()
    print(f"transformers {cls} loads the written folder: max abs diff image {di:.2e} text {dt:.2e}")
    assert di <= TOL and dt <= TOL, f"max abs diff image {di:.2e} text {dt:.2e}"
    assert_close_rel(theirs.logit_scale, model.logit_scale, 1e-6, "logit_scale")
    back = clipforge.load_model(str(out))  # round trip: bitwise the same weights, the same config
    assert back.config == model.config.replace(
        text=dataclasses.replace(model.config.text, hf_tokenizer_name=str(out))
    )
    for key, value in model.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key


def _pooled(out):
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def test_hf_text_towers_transformers_has_no_model_for_stay_refused(tmp_path):
    """An open_clip-style XLM-R CLIP (mean pooling, MLP projection) fits no transformers folder: refused, naming
    why, before any file is written."""
    import clipforge

    model = clipforge.load_model(str(_altclip_folder(tmp_path / "source")))
    cfg = model.config
    mean_pooled = cfg.replace(text=dataclasses.replace(cfg.text, hf_pooler_type="mean_pooler"))
    with pytest.raises(ConfigError, match="AltCLIPModel takes the first token.*--to clipforge"):
        save_model(CLIP(mean_pooled), tmp_path / "out", "hf")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_convert_cli_writes_siglip_to_openclip_and_chinese_clip_to_hf(monkeypatch, tmp_path, capsys):
    """`clipforge convert --to openclip|hf` for these families: the CLI reaches the writers above."""
    import clipforge
    from clipforge.cli import convert as convert_cli

    _shrink_timm(monkeypatch, openclip_siglip.TIMM_SIGLIP_TOWERS, "vit_base_patch16_siglip_224", SMALL_ROW)
    model = _randomised(_small_siglip())
    clipforge.save_model(model, tmp_path / "siglip")
    assert convert_cli.main([str(tmp_path / "siglip"), str(tmp_path / "oc"), "--to", "openclip"]) == 0
    assert convert_cli.main([str(tmp_path / "oc"), str(tmp_path / "cf"), "--to", "clipforge"]) == 0
    for key, value in model.state_dict().items():
        assert torch.equal(clipforge.load_model(str(tmp_path / "cf")).state_dict()[key], value), key
    source = _chinese_clip_folder(tmp_path / "cn")
    assert convert_cli.main([str(source), str(tmp_path / "cn-hf"), "--to", "hf"]) == 0
    assert (tmp_path / "cn-hf" / "vocab.txt").is_file()
    clipforge.save_model(CLIP(_small_eva()), tmp_path / "eva")  # an EVA02 shape no timm model has: refused
    assert convert_cli.main([str(tmp_path / "eva"), str(tmp_path / "no"), "--to", "openclip"]) != 0
    assert "no timm model open_clip can build" in capsys.readouterr().err
    assert not (tmp_path / "no" / "open_clip_config.json").exists()
