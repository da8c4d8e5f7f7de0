"""Test setup shared by the whole suite.

torchvision 0.28.0 from PyPI is a CUDA build; beside the CPU torch wheel its import fails with
"operator torchvision::nms does not exist", which breaks `import open_clip`, `timm` and transformers'
CLIP. Defining the two operator schemas first makes the import work (transforms work, torchvision.ops
does not). This lives in the tests only: the library never imports torchvision.
"""

import torch

try:
    _TV_LIB = torch.library.Library("torchvision", "DEF")
    _TV_LIB.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _TV_LIB.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
except RuntimeError:  # already defined (a real CPU torchvision, or a second conftest import)
    pass

torch.set_num_threads(max(1, torch.get_num_threads()))
