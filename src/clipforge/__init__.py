"""clipforge: one toolkit for CLIP-style contrastive language-image models.

import clipforge
model = clipforge.create_model("ViT-B-32", pretrained="laion2b_s34b_b79k")   # or load_model(path)
tokenizer, preprocess = clipforge.get_tokenizer(model), clipforge.get_preprocess(model)
classifier = clipforge.ZeroShotClassifier(model, tokenizer, ["cat", "dog"], clipforge.get_templates("simple"))
"""

from .compat import (
    IMAGENET_CLASSNAMES,
    OPENAI_IMAGENET_TEMPLATES,
    SIMPLE_IMAGENET_TEMPLATES,
    build_zero_shot_classifier,
    create_model_and_transforms,
    create_model_from_pretrained,
    get_model_config,
    list_pretrained_tags_by_model,
)
from .factory import get_preprocess, get_tokenizer
from .image import load_image
from .models import CLIP, CLIPConfig, ConfigError, PreprocessConfig, TextConfig, VisionConfig, list_models
from .models.output import CLIPOutput
from .text import tokenize
from .weights.formats import CheckpointError
from .weights.loading import convert, create_model, load_model, save_model
from .weights.pretrained import list_pretrained
from .weights.push import push_to_hub
from .zeroshot import ZeroShotClassifier, get_templates

__version__ = "0.1.0"

__all__ = [
    "IMAGENET_CLASSNAMES",
    "OPENAI_IMAGENET_TEMPLATES",
    "SIMPLE_IMAGENET_TEMPLATES",
    "build_zero_shot_classifier",
    "create_model_and_transforms",
    "create_model_from_pretrained",
    "get_model_config",
    "list_pretrained_tags_by_model",
    "tokenize",
    "CLIP",
    "CLIPConfig",
    "CLIPOutput",
    "CheckpointError",
    "ConfigError",
    "PreprocessConfig",
    "TextConfig",
    "VisionConfig",
    "ZeroShotClassifier",
    "convert",
    "create_model",
    "get_preprocess",
    "get_templates",
    "get_tokenizer",
    "list_models",
    "list_pretrained",
    "load_image",
    "load_model",
    "push_to_hub",
    "save_model",
]
