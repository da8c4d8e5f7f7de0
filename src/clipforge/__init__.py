"""clipforge: one toolkit for CLIP-style contrastive language-image models.

import clipforge
model = clipforge.create_model("ViT-B-32", pretrained="laion2b_s34b_b79k")   # or load_model(path)
tokenizer, preprocess = clipforge.get_tokenizer(model), clipforge.get_preprocess(model)
classifier = clipforge.ZeroShotClassifier(model, tokenizer, ["cat", "dog"], clipforge.get_templates("simple"))
"""

from .factory import get_preprocess, get_tokenizer
from .image import load_image
from .models import CLIP, CLIPConfig, ConfigError, PreprocessConfig, TextConfig, VisionConfig, list_models
from .models.output import CLIPOutput
from .weights.formats import CheckpointError
from .weights.loading import convert, create_model, load_model, save_model
from .weights.pretrained import list_pretrained
from .zeroshot import ZeroShotClassifier, get_templates

__version__ = "0.1.0"

__all__ = [
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
    "save_model",
]
