"""Lets the PyPI torchvision wheel (a CUDA build) import next to the CPU torch wheel in clipforge's dev venv.

Why: torchvision 0.28.0 on PyPI is built against CUDA torch. Beside the CPU torch 2.13.0 wheel its compiled
extension cannot load, so no `torchvision::*` operator is registered, and `torchvision/_meta_registrations.py`
then fails the whole import with "operator torchvision::nms does not exist". That breaks `import open_clip`,
timm and transformers' CLIP image processing. No CPU torchvision wheel is reachable (only PyPI is), so
`scripts/setup.sh` installs this module into the venv's site-packages with a one-line `.pth` file that calls
`install()` at interpreter start-up.

What it does: `install()` only appends a `sys.meta_path` finder (no torch import at start-up). The finder acts
once, when `torchvision._meta_registrations` is about to be imported, i.e. inside `import torchvision`, after
torchvision has tried to load its own extension. If `torchvision::nms` / `torchvision::qnms` are still missing
at that point, it defines their schemas (no kernels), so the import completes: transforms work, torchvision.ops
does not. A real CPU torchvision (extension loaded) or an earlier definition (tests/conftest.py does the same)
is left alone. It then steps aside and lets the normal import machinery load the module.

This is development tooling: clipforge itself never imports torchvision.
"""

from __future__ import annotations

import sys
from importlib.abc import MetaPathFinder

TRIGGER = "torchvision._meta_registrations"
SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
# The torch.library.Library that holds the schemas; it must stay referenced or torch deregisters them.
_LIBRARY = None


def define_missing_schemas() -> list[str]:
    """Define whichever of SCHEMAS torch does not know yet; returns the names defined (idempotent)."""
    global _LIBRARY
    import torch  # only reached inside `import torchvision`, which imports torch anyway

    missing = [name for name in SCHEMAS if not hasattr(torch.ops.torchvision, name)]
    defined = []
    for name in missing:
        if _LIBRARY is None:
            _LIBRARY = torch.library.Library("torchvision", "FRAGMENT")
        try:
            _LIBRARY.define(SCHEMAS[name])
        except RuntimeError as exc:  # defined meanwhile by someone else (tests/conftest.py): nothing to do
            if "already" not in str(exc) and "multiple times" not in str(exc):
                raise
            continue
        defined.append(name)
    return defined


class TorchvisionSchemaFinder(MetaPathFinder):
    """Finds nothing itself: it only runs `define_missing_schemas` before TRIGGER is imported, once."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != TRIGGER:
            return None
        uninstall()
        define_missing_schemas()
        return None  # the regular finders load the module


def install() -> None:
    """Put one TorchvisionSchemaFinder on sys.meta_path (a second call does nothing)."""
    if not any(isinstance(f, TorchvisionSchemaFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, TorchvisionSchemaFinder())


def uninstall() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, TorchvisionSchemaFinder)]
