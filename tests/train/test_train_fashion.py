"""A short real training that must learn: the smoke recipe on Fashion-MNIST reaches >= 80% zero-shot top-1.

Zero-shot means prompts only, with test templates the training captions never used, over the whole
10,000-image test split. Needs Debian's dataset-fashion-mnist (scripts/setup.sh installs it).
"""

import importlib.util
import time
from pathlib import Path

import pytest

from clipforge.data import FASHION_TEST_TEMPLATES, FASHION_TRAIN_TEMPLATES
from clipforge.train.loop import train

RECIPE = Path(__file__).parents[2] / "configs" / "fashion_mnist.py"


def _recipe():
    spec = importlib.util.spec_from_file_location("fashion_recipe", RECIPE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_test_templates_never_appear_in_training_captions():
    assert not set(FASHION_TEST_TEMPLATES) & set(FASHION_TRAIN_TEMPLATES)


@pytest.mark.slow
def test_smoke_recipe_learns_fashion_mnist_zero_shot(tmp_path):
    cfg = _recipe().get_config("smoke").replace(output_dir=str(tmp_path / "run"))
    cfg = cfg.replace(logging=cfg.logging.__class__(every_steps=50, progress=False, plot=True))
    start = time.perf_counter()
    result = train(cfg)
    elapsed = time.perf_counter() - start
    top1 = result.final_metrics["zeroshot_top1"]
    print(f"smoke recipe: {result.state.step} steps, zero-shot top-1 {top1:.4f} in {elapsed:.0f} s")
    assert top1 >= 0.80
    assert (tmp_path / "run" / "curves.png").stat().st_size > 10_000
    assert (tmp_path / "run" / "model" / "clipforge_model.safetensors").exists()
