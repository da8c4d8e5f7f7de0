"""The fashion_mnist_ft recipe: classifier fine-tuning of the quickstart model, end to end on a few steps."""

import os

import pytest
import torch

import clipforge
from clipforge.data import FASHION_MNIST_CLASSES, FASHION_TEST_TEMPLATES
from clipforge.data.builtins import FASHION_MNIST_ROOT
from clipforge.recipes import list_recipes, load_recipe
from clipforge.recipes.fashion_mnist import MODEL
from clipforge.train.classifier import HEAD_FILE, ClassifierHead, resolve_head_spec
from clipforge.train.config import EvalConfig, LogConfig, ScheduleConfig
from clipforge.train.loop import train
from clipforge.weights.loading import save_model


def test_recipe_config(tmp_path):
    assert "fashion_mnist_ft" in list_recipes()
    cfg = load_recipe("fashion_mnist_ft")
    assert cfg.loss.kind == "classifier" and cfg.model.pretrained == "runs/fashion_mnist/model"
    assert cfg.model.overrides == MODEL.overrides  # the quickstart's architecture
    assert cfg.optim.weight_decay == 0.1 and cfg.schedule.kind == "cosine" and cfg.schedule.warmup_steps > 0
    (tmp_path / "run" / "model").mkdir(parents=True)
    assert load_recipe("fashion_mnist_ft", str(tmp_path / "run")).model.pretrained == str(tmp_path / "run" / "model")
    assert load_recipe("fashion_mnist_ft", "x.safetensors").model.pretrained == "x.safetensors"
    spec = resolve_head_spec(cfg)
    assert spec.classes == FASHION_MNIST_CLASSES and spec.class_templates == FASHION_TEST_TEMPLATES


@pytest.mark.skipif(not os.path.isdir(FASHION_MNIST_ROOT), reason="Fashion-MNIST is not installed")
def test_recipe_fine_tunes_a_saved_zero_shot_model(tmp_path):
    torch.manual_seed(0)
    zero_shot = clipforge.create_model(MODEL.name, **MODEL.overrides)
    save_model(zero_shot, tmp_path / "zs" / "model")
    cfg = load_recipe("fashion_mnist_ft", str(tmp_path / "zs"))
    data = cfg.data.__class__(sources=cfg.data.sources, batch_size=16)
    cfg = cfg.replace(
        output_dir=str(tmp_path / "ft"),
        data=data,
        schedule=ScheduleConfig(epochs=1, max_steps=3, warmup_steps=1),
        eval=EvalConfig(),
        logging=LogConfig(every_steps=1, progress=False, plot=False),
    )
    result = train(cfg)
    tuned = clipforge.load_model(result.model_dir)
    tokenizer = clipforge.get_tokenizer(tuned)
    head = ClassifierHead.load(tmp_path / "ft" / "checkpoints" / HEAD_FILE, resolve_head_spec(cfg), tokenizer)
    assert head.weights.shape == (10, MODEL.overrides["embed_dim"])
    expected = ClassifierHead.build(zero_shot, tokenizer, resolve_head_spec(cfg)).weights
    assert torch.equal(head.weights, expected)  # the saved zero-shot model's head
    assert all(torch.equal(a, b) for (k, a), b in zip(zero_shot.state_dict().items(), tuned.state_dict().values())
               if k.startswith("text.") or k == "logit_scale")
