"""NLLB-CLIP (M2M100 / NLLB encoder), mT5 text towers and ViT-L-14-worldwide (mT5 vocabulary).

Reference: open_clip 3.3 building a CustomTextCLIP whose `hf_model_name` is a local folder holding a tiny random
M2M100 or MT5 config.json and a tiny tokenizer.json trained here (NLLB-style BPE with language code tokens,
mT5-style Unigram with `<pad>`=0 `</s>`=1): open_clip builds the whole encoder-decoder and keeps `.encoder`,
clipforge builds the encoder alone. Same random weights, same ids, features within 1e-4 after L2 norm. The
full-size layouts of the named configs are checked on the meta device by tests/models/test_architectures.py.
"""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch

import clipforge
from clipforge.models import CLIP, CLIPConfig, TextConfig, VisionConfig, get_model_config
from clipforge.text.hf_tokenizer import HFTokenizer
from clipforge.weights.openclip import config_from_openclip, config_to_openclip
from support.hf_text import CORPUS
from support.tolerance import assert_close_rel

transformers = pytest.importorskip("transformers")
open_clip = pytest.importorskip("open_clip")

TOL = 1e-4
LANGS = ["eng_Latn", "fra_Latn", "zho_Hans", "arb_Arab", "hin_Deva"]
TEXTS = sorted(set(CORPUS)) + [
    "  Mixed   spacing &amp; HTML &lt;tags&gt; in   text ",
    "Hello, World! It's_a test.",
    "",
    "a very long caption " * 40,  # truncated with its end token kept
]
VISION = {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16}


def _nllb_tokenizer(folder):
    """NLLB's layout: BPE over Metaspace pieces, <s>=0 <pad>=1 </s>=2 <unk>=3, language codes as special tokens."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(" {2,}", " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<s>", "<pad>", "</s>", "<unk>"])
    tok.train_from_iterator(CORPUS, trainer=trainer)
    tok.add_special_tokens([AddedToken(code, special=True, normalized=False) for code in LANGS])
    tok.add_special_tokens([AddedToken("<mask>", special=True, lstrip=True)])
    # the hub file's own template; transformers (and clipforge) rebuild it from the language setting
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 2)])
    tok.save(str(folder / "tokenizer.json"))
    config = {
        "tokenizer_class": "NllbTokenizer",
        "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>", "mask_token": "<mask>",
        "src_lang": None, "tgt_lang": None, "additional_special_tokens": LANGS, "legacy_behaviour": False,
    }  # fmt: skip
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return tok.get_vocab_size()


def _mt5_tokenizer(folder):
    """mT5's layout: Unigram over Metaspace pieces, <pad>=0 </s>=1 <unk>=2, `$A </s>`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    trainer = trainers.UnigramTrainer(vocab_size=300, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>")
    tok.train_from_iterator(CORPUS, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tok.save(str(folder / "tokenizer.json"))
    config = {"tokenizer_class": "T5Tokenizer", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>",
              "extra_ids": 0, "additional_special_tokens": []}  # fmt: skip
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return tok.get_vocab_size()


def _m2m_fields(vocab_size: int) -> dict:
    return {
        "model_type": "m2m_100", "vocab_size": vocab_size, "d_model": 32, "encoder_layers": 2, "decoder_layers": 1,
        "encoder_attention_heads": 4, "decoder_attention_heads": 4, "encoder_ffn_dim": 64, "decoder_ffn_dim": 64,
        "max_position_embeddings": 128, "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2,
        "scale_embedding": True, "activation_function": "relu", "dropout": 0.1, "attention_dropout": 0.1,
        "is_encoder_decoder": True,
    }  # fmt: skip


def _mt5_fields(vocab_size: int) -> dict:
    return {
        "model_type": "mt5", "vocab_size": vocab_size, "d_model": 32, "d_kv": 8, "d_ff": 48, "num_layers": 2,
        "num_decoder_layers": 1, "num_heads": 4, "relative_attention_num_buckets": 8, "pad_token_id": 0,
        "eos_token_id": 1, "decoder_start_token_id": 0, "feed_forward_proj": "gated-gelu", "dropout_rate": 0.1,
        "layer_norm_epsilon": 1e-6, "tie_word_embeddings": False, "is_encoder_decoder": True,
    }  # fmt: skip


FAMILIES = {  # family -> (tokenizer builder, encoder fields, pooler, projection) as open_clip's configs set them
    "nllb": (_nllb_tokenizer, _m2m_fields, "cls_pooler", "linear"),
    "mt5": (_mt5_tokenizer, _mt5_fields, "mean_pooler", "mlp"),
}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request, tmp_path_factory):
    """(name, folder with config.json + tokenizer files, encoder fields, open_clip model, open_clip tokenizer)."""
    name = request.param
    build_tok, fields_of, pooler, proj = FAMILIES[name]
    folder = tmp_path_factory.mktemp(name)
    fields = fields_of(build_tok(folder))
    hf = {k: v for k, v in fields.items() if k != "model_type"}
    transformers.AutoConfig.for_model(fields["model_type"], **hf).save_pretrained(folder)
    text_cfg = {"hf_model_name": str(folder), "hf_tokenizer_name": str(folder), "hf_model_pretrained": False,
                "hf_pooler_type": pooler, "hf_proj_type": proj}  # fmt: skip
    path = folder / f"cf-test-{name}.json"
    path.write_text(json.dumps({"embed_dim": 24, "vision_cfg": VISION, "text_cfg": text_cfg}))
    open_clip.add_model_config(path)
    torch.manual_seed(0)
    reference = open_clip.create_model(f"cf-test-{name}", pretrained_hf=False).eval()
    with torch.no_grad():  # random everything (unit norms and zero biases would hide mismatches)
        for p in reference.parameters():
            p.copy_(0.05 * torch.randn_like(p))
    return name, folder, fields, reference, open_clip.get_tokenizer(f"cf-test-{name}")


def _config(fields: dict, name: str, folder=None) -> CLIPConfig:
    _, _, pooler, proj = FAMILIES[name]
    text = TextConfig(hf_config=dict(fields), hf_pooler_type=pooler, hf_proj_type=proj,
                      hf_tokenizer_name=None if folder is None else str(folder))  # fmt: skip
    vision = VisionConfig(image_size=32, layers=1, width=32, patch_size=16, heads=2)
    return CLIPConfig(embed_dim=24, vision=vision, text=text)


def test_tokenizer_ids_equal_open_clips(family):
    name, folder, fields, _, theirs = family
    ours = clipforge.get_tokenizer(_config(fields, name, folder))
    assert isinstance(ours, HFTokenizer)
    got, want = ours(TEXTS), theirs(TEXTS)
    assert got.shape == (len(TEXTS), 77) and torch.equal(got, want)
    assert torch.equal(ours(TEXTS, context_length=12), theirs(TEXTS, context_length=12))
    eos = fields["eos_token_id"]
    assert int(got[-1, -1]) == eos  # the truncated row keeps its end token
    if name == "nllb":
        assert ours.language == "eng_Latn" and int(got[0, 0]) == ours._fast_vocab.token_to_id("eng_Latn")


def test_nllb_language_code(family):
    """`language` frames each text with that code, as transformers' tokenizer with `src_lang` set does."""
    name, folder, _, _, theirs = family
    if name != "nllb":
        with pytest.raises(ValueError, match="NLLB tokenizers only"):
            HFTokenizer(folder, language="fra_Latn")
        return
    ours = clipforge.get_tokenizer(_config(family[2], name, folder), 20, language="fra_Latn")
    theirs.tokenizer.src_lang = "fra_Latn"  # open_clip's language= is reset by transformers on every call
    try:
        assert torch.equal(ours(TEXTS), theirs(TEXTS, context_length=20))
    finally:
        theirs.tokenizer.src_lang = "eng_Latn"
    assert "fra_Latn" in repr(ours)
    with pytest.raises(ValueError, match="not a language code"):
        HFTokenizer(folder, language="xx_Yyyy")
    with pytest.raises(ValueError, match="NLLB-CLIP's tokenizer only"):
        clipforge.get_tokenizer("ViT-B-32", language="fra_Latn")


def test_text_features_match_open_clip(family):
    name, folder, fields, reference, theirs = family
    model = CLIP(_config(fields, name)).eval()
    model.load_state_dict(reference.state_dict())  # open_clip's names: text.transformer.* (the encoder), text.proj.*
    tokens = theirs(TEXTS)
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = reference.encode_text(tokens, normalize=True)
        actual = model.encode_text(tokens, normalize=True)
        assert_close_rel(model.encode_image(images), reference.encode_image(images), 1e-5, "image features")
    diff = (actual - expected).abs().max().item()
    print(f"{name}: max abs diff of normalised text features {diff:.2e}")
    assert diff <= TOL, f"{name} text features differ from open_clip's by {diff:.2e}"
    with torch.no_grad():  # the pooled position / mask matters: changing the first token changes the feature
        moved = tokens.clone()
        moved[:, 0] = tokens[:, 1]
        assert (model.encode_text(moved[:2], normalize=True) - actual[:2]).abs().max() > 1e-3


def test_padding_does_not_change_features(family):
    name, folder, fields, reference, theirs = family
    model = CLIP(_config(fields, name)).eval()
    model.load_state_dict(reference.state_dict())
    with torch.no_grad():
        short, long = theirs(["a cat", "a dog"], context_length=10), theirs(["a cat", "a dog"], context_length=40)
        assert_close_rel(model.encode_text(short), model.encode_text(long), 1e-5, f"{name} features with padding")


def test_training_step_checkpointing_and_compile(family):
    """Forward/backward reaches every encoder layer; checkpointed gradients equal plain ones (dropout off);
    `torch.compile` of the text tower gives the eager features."""
    name, folder, fields, _, theirs = family
    fields = {**fields, "dropout": 0.0, "attention_dropout": 0.0, "dropout_rate": 0.0}
    tokens = theirs(TEXTS[:4], context_length=16)
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = CLIP(_config(fields, name)).train()
        model.set_grad_checkpointing(checkpointing)
        model.encode_text(tokens, normalize=True).pow(2).sum(dim=0).mean().backward()
        missing = [n for n, p in model.text.named_parameters() if p.requires_grad and p.grad is None]
        assert not missing, missing[:5]
        grads.append(torch.cat([p.grad.flatten() for p in model.text.transformer.parameters()]))
    assert_close_rel(grads[1], grads[0], 1e-5, f"{name} checkpointed gradients")
    model.eval()
    compiled = torch.compile(model.text, backend="aot_eager")
    with torch.no_grad():
        assert_close_rel(compiled(tokens), model.text(tokens), 1e-5, f"{name} compiled text tower")


def test_lock_and_embeddings_path(family):
    name, folder, fields, reference, theirs = family
    model = CLIP(_config(fields, name)).eval()
    model.load_state_dict(reference.state_dict())
    tokens = theirs(TEXTS[:3], context_length=20)
    with torch.no_grad():
        embedded = model.text.token_embedding(tokens)
        assert_close_rel(model.encode_text_embeddings(embedded, tokens), model.encode_text(tokens), 1e-5, name)
    layers = "layers" if name == "nllb" else "block"
    model.text.lock(unlocked_layers=1)
    trainable = {n for n, p in model.text.named_parameters() if p.requires_grad}
    assert any(n.startswith(f"transformer.{layers}.1.") for n in trainable)
    assert not any(n.startswith((f"transformer.{layers}.0.", "transformer.embed_tokens.")) for n in trainable)
    model.text.lock(0)
    assert all(n.startswith("proj") for n, p in model.text.named_parameters() if p.requires_grad)


def test_mt5_takes_any_length_nllb_refuses_past_its_positions(family):
    name, _, fields, _, _ = family
    model = CLIP(_config(fields, name)).eval()
    tokens = torch.full((1, 200), 5)
    if name == "mt5":  # relative position buckets: no table to run past (open_clip sets no limit either)
        assert model.text.max_length is None
        with torch.no_grad():
            assert model.encode_text(tokens).shape == (1, 24)
    else:
        with pytest.raises(ValueError, match="exceeds this text encoder's 128 positions"):
            model.encode_text(tokens)


@pytest.mark.parametrize(
    "name", ["nllb-clip-base", "nllb-clip-large", "nllb-clip-base-siglip", "mt5-base-ViT-B-32", "mt5-xl-ViT-H-14"]
)
def test_named_configs_are_open_clips(name):
    ours = get_model_config(name)
    assert config_from_openclip(open_clip.get_model_config(name), None, ours.text.hf_config) == ours
    cfg = config_to_openclip(ours)
    assert config_from_openclip(cfg["model_cfg"], cfg["preprocess_cfg"], cfg["hf_text_config"]) == ours


def test_vit_l_14_worldwide_config_and_canonicalising_tokenizer(tmp_path):
    """CLIP's causal tower over the mT5 vocabulary (250100 rows, eos pooling at id 1), texts canonicalised."""
    for name in ("ViT-L-14-worldwide", "ViT-L-14-worldwide-quickgelu"):
        theirs = config_from_openclip(open_clip.get_model_config(name))
        assert theirs == get_model_config(name)
    ours = get_model_config("ViT-L-14-worldwide")
    assert (ours.text.vocab_size, ours.text.pool_type, ours.text.eos_id) == (250100, "eos", 1)
    assert ours.text.tokenizer_clean == "canonicalize"
    assert config_to_openclip(ours)["model_cfg"]["text_cfg"]["tokenizer_kwargs"] == {"clean": "canonicalize"}
    _mt5_tokenizer(tmp_path)
    config = ours.replace(text=dataclasses.replace(ours.text, hf_tokenizer_name=str(tmp_path)))
    got = clipforge.get_tokenizer(config)(TEXTS)
    want = open_clip.tokenizer.HFTokenizer(str(tmp_path), context_length=77, clean="canonicalize")(TEXTS)
    assert torch.equal(got, want)
    plain = HFTokenizer(tmp_path, 77)(TEXTS)
    assert not torch.equal(got, plain)  # the cleaning matters on this corpus (case, punctuation)


def test_openclip_folder_round_trip(family, tmp_path):
    """clipforge writes an open_clip folder both libraries load: same ids from the folder's tokenizer, same
    features; a stale sinusoidal-position buffer in an old checkpoint is dropped on load."""
    from clipforge.weights.loading import save_model
    from clipforge.weights.openclip_hftext import clean_hf_text_state_dict

    name, folder, fields, reference, _ = family
    config = _config(fields, name, folder)
    config = config.replace(text=dataclasses.replace(config.text, hf_model_name=str(folder)))
    model = CLIP(config).eval()
    model.load_state_dict(reference.state_dict())
    out = save_model(model, tmp_path / "model", format="openclip")
    for file in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(folder / file, out / file)
    ours = clipforge.load_model(out).eval()
    theirs = open_clip.create_model(f"local-dir:{out}", pretrained=None, load_weights=True).eval()
    tokens = clipforge.get_tokenizer(f"local-dir:{out}")(TEXTS)
    assert torch.equal(tokens, open_clip.get_tokenizer(f"local-dir:{out}")(TEXTS))
    with torch.no_grad():
        got, want = ours.encode_text(tokens, normalize=True), theirs.encode_text(tokens, normalize=True)
    assert (got - want).abs().max().item() <= TOL
    state = {**reference.state_dict(), "text.transformer.embed_positions.weights": torch.zeros(3, 32)}
    assert "text.transformer.embed_positions.weights" not in clean_hf_text_state_dict(state)


def test_t5_tower_matches_transformers_t5_encoder():
    """open_clip lists no "t5" architecture, so the reference is transformers' T5EncoderModel, same weights:
    mean pooling over the non-padding positions of its last hidden state, then the projection."""
    fields = {**_mt5_fields(64), "model_type": "t5", "dropout_rate": 0.0}
    torch.manual_seed(0)
    model = CLIP(_config(fields, "mt5")).eval()
    assert type(model.text.transformer).__name__ == "T5Stack"
    t5_config = transformers.T5Config(**{k: v for k, v in fields.items() if k != "model_type"})
    reference = transformers.T5EncoderModel(t5_config)
    reference.encoder.load_state_dict(model.text.transformer.state_dict())
    tokens = torch.randint(2, 64, (3, 12), generator=torch.Generator().manual_seed(2))
    tokens[0, 8:] = 0  # right padding (pad id 0)
    mask = (tokens != 0).long()
    with torch.no_grad():
        hidden = reference.eval()(input_ids=tokens, attention_mask=mask).last_hidden_state  # (3, 12, 32)
        weights = mask.unsqueeze(-1).float()
        expected = model.text.proj((hidden * weights).sum(dim=1) / weights.sum(dim=1))  # (3, 24)
        assert_close_rel(model.text(tokens), expected, 1e-5, "t5 text tower")
