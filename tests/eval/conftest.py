"""Fixtures of the evaluation tests: a tiny random model."""

from __future__ import annotations

import pytest
import torch

import clipforge


@pytest.fixture(scope="module")
def tiny_model():
    """A tiny random CLIP (32 px images): features of noise images carry no class information."""
    torch.manual_seed(0)
    return clipforge.create_model("tiny-vit").eval()
