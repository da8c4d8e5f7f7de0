"""clipforge: one toolkit for CLIP-style contrastive language-image models."""

from .models import CLIP, CLIPConfig, ConfigError, PreprocessConfig, TextConfig, VisionConfig, list_models

__version__ = "0.1.0"
