"""Image input for CLIP models: loading files safely, mode conversion, eval and train preprocessing.

    load_image(path | bytes | file | PIL) -> upright RGB PIL image     (loading.py, convert.py)
    build_transform(cfg, train=False)     -> PIL image -> (3, size, size) float tensor
    preprocess_batch(images, transform)   -> (N, 3, size, size)

The eval transform is pixel-exact with open_clip's on RGB and grey images; transforms.py lists where clipforge
deliberately differs. Nothing here imports torchvision.
"""

from .augment import AugmentConfig, TrainTransform
from .convert import WHITE, to_rgb
from .loading import (
    ALLOWED_FORMATS,
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PIXELS,
    ImageAspectError,
    ImageLoadError,
    ImageTooLargeError,
    load_image,
)
from .resize_guard import DEFAULT_MAX_RESIZE_PIXELS, check_resize
from .transforms import EvalTransform, build_transform, center_crop_or_pad, preprocess_batch, resized_size

__all__ = [
    "ALLOWED_FORMATS",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_MAX_RESIZE_PIXELS",
    "WHITE",
    "AugmentConfig",
    "EvalTransform",
    "ImageAspectError",
    "ImageLoadError",
    "ImageTooLargeError",
    "TrainTransform",
    "build_transform",
    "center_crop_or_pad",
    "check_resize",
    "load_image",
    "preprocess_batch",
    "resized_size",
    "to_rgb",
]
