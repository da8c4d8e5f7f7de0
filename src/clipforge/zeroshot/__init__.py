"""Zero-shot classification: prompt templates (data files), class weights, ensembling."""

from .classifier import ZeroShotClassifier, build_class_weights
from .templates import get_templates, imagenet_classnames

__all__ = ["ZeroShotClassifier", "build_class_weights", "get_templates", "imagenet_classnames"]
