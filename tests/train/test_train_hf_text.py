"""Training a CLIP with a Hugging Face text tower: the trainer, text locking with unlocked layers, grad
checkpointing and FSDP2's sharding units, on a tiny random XLM-R (tests/support/hf_text.py)."""

from __future__ import annotations

import pytest
import torch

import clipforge
from clipforge.data import DataConfig, SourceConfig
from clipforge.models import CLIP, CLIPConfig, TextConfig, VisionConfig
from clipforge.train.config import LogConfig, ModelSpec, OptimConfig, ScheduleConfig, TrainConfig
from clipforge.train.freeze import lock_text_tower
from clipforge.train.loop import train
from support.hf_text import make_hf_text_folder
from support.pairs import write_pair_dataset

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def hf_model_folder(tmp_path_factory):
    """A clipforge checkpoint folder of a tiny HF-text CLIP whose tokenizer is a local folder."""
    tmp = tmp_path_factory.mktemp("hfclip")
    folder, fields = make_hf_text_folder(tmp)
    text = TextConfig(context_length=20, hf_config=fields, hf_model_name=str(folder))
    vision = VisionConfig(image_size=32, layers=1, width=32, patch_size=16, heads=2)
    torch.manual_seed(0)
    model = CLIP(CLIPConfig(embed_dim=16, vision=vision, text=text))
    return clipforge.save_model(model, tmp / "init"), model


def _changed(before: dict, after: dict, prefix: str) -> bool:
    return any(not torch.equal(before[k], after[k]) for k in before if k.startswith(prefix))


def test_train_with_locked_hf_text_tower_and_grad_checkpointing(tmp_path, hf_model_folder):
    """lock_text with 1 unlocked layer: embeddings and layer 0 stay, layer 1 and the projection learn."""
    folder, init = hf_model_folder
    data = write_pair_dataset(tmp_path)  # writes the images into an existing folder
    spec = ModelSpec(
        name=f"local-dir:{folder}", lock_text=True, lock_text_unlocked_layers=1, grad_checkpointing=True
    )
    cfg = TrainConfig(
        output_dir=str(tmp_path / "run"),
        model=spec,
        data=DataConfig(sources=(SourceConfig(kind="csv", path=str(data / "train.csv")),), batch_size=8, seed=3),
        optim=OptimConfig(lr=1e-2),
        schedule=ScheduleConfig(epochs=1, max_steps=2, warmup_steps=0),
        logging=LogConfig(every_steps=1, progress=False, plot=False),
    )
    result = train(cfg)
    assert result.state.step == 2
    trained = clipforge.load_model(tmp_path / "run" / "model")
    assert trained.config.text.is_hf
    before, after = init.state_dict(), trained.state_dict()
    assert not _changed(before, after, "text.transformer.embeddings.")
    assert not _changed(before, after, "text.transformer.encoder.layer.0.")
    assert _changed(before, after, "text.transformer.encoder.layer.1.")
    assert _changed(before, after, "text.proj.")
    assert _changed(before, after, "visual.")


def test_lock_text_tower_counts_hf_layers(hf_model_folder):
    _, init = hf_model_folder
    model = CLIP(init.config)
    lock_text_tower(model, 0)  # everything frozen but the projection (open_clip's HFTextEncoder.lock)
    trainable = {n for n, p in model.text.named_parameters() if p.requires_grad}
    assert trainable == {"proj.0.weight", "proj.2.weight"}
    model.lock_text_tower(2, freeze_layer_norm=False)  # open_clip's counting: 2 layers; frozen LayerNorms train
    trainable = {n for n, p in model.text.named_parameters() if p.requires_grad}
    assert "transformer.embeddings.LayerNorm.weight" in trainable
    assert "transformer.embeddings.word_embeddings.weight" not in trainable
    assert "transformer.encoder.layer.0.attention.self.query.weight" in trainable


def test_fsdp_units_are_the_encoder_layers(hf_model_folder):
    from clipforge.train.sharding import _sharded_units

    _, init = hf_model_folder
    units = _sharded_units(init)
    layers = list(init.text.transformer.encoder.layer)
    assert all(any(u is layer for u in units) for layer in layers)
    assert units[-1] is init.text and units[-2] is init.visual


def test_hf_tokenizer_end_token_for_the_trainer(hf_model_folder):
    """The trainer's CLIPA truncation keeps `tokenizer.eot_token_id`: XLM-R's </s> (2), not CLIP's 49407."""
    _, init = hf_model_folder
    tokenizer = clipforge.get_tokenizer(init)
    assert tokenizer.eot_token_id == 2
    row = tokenizer(["a photo of a cat"])[0]
    assert int(row[row != tokenizer.pad_token_id][-1]) == tokenizer.eot_token_id
