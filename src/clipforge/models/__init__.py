"""Model architectures only: built from a config, never aware of checkpoints, training or serving."""

from .clip import CLIP
from .config import CLIPConfig, ConfigError, PreprocessConfig, TextConfig, VisionConfig
from .output import CLIPOutput
from .registry import get_model_config, list_models

__all__ = [
    "CLIP",
    "CLIPConfig",
    "CLIPOutput",
    "ConfigError",
    "PreprocessConfig",
    "TextConfig",
    "VisionConfig",
    "get_model_config",
    "list_models",
]
