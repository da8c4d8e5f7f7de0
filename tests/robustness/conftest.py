"""Shared, generated-once inputs of the fuzz suite: one tiny saved model and the image corpus."""

from __future__ import annotations

import pytest
import torch

import clipforge
from robustness.corpus import write_images


@pytest.fixture(scope="session")
def saved_model(tmp_path_factory) -> str:
    """A tiny-vit saved once per session; every command of the suite loads it with --pretrained."""
    folder = tmp_path_factory.mktemp("model") / "tiny"
    torch.manual_seed(0)
    clipforge.save_model(clipforge.create_model("tiny-vit"), folder)
    return str(folder)


@pytest.fixture(scope="session")
def images(tmp_path_factory):
    """The bad-image corpus (robustness/corpus.py), written once per session."""
    return write_images(tmp_path_factory.mktemp("fuzz") / "images")
