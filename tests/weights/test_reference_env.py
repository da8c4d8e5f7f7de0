"""The reference libraries (open_clip, transformers) import in the project venv without tests/conftest.py.

The PyPI torchvision wheel is a CUDA build that fails to import next to the CPU torch unless two operator
schemas exist first; scripts/setup.sh installs scripts/torchvision_cpu_shim.py into the venv for that. Every
check runs in a fresh interpreter (subprocess), so conftest.py's own schema definitions play no part.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHIM_SOURCE = REPO / "scripts" / "torchvision_cpu_shim.py"
SHIM_NAME = "clipforge_torchvision_cpu_shim"
SETUP_HINT = "run `bash scripts/setup.sh` to install the torchvision import shim into .venv"


def _python(code: str, *flags: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        [sys.executable, *flags, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env=env,
    )


def _site_packages() -> Path:
    return Path(sysconfig.get_paths()["purelib"])


def test_shim_is_installed_and_current():
    site = _site_packages()
    installed = site / f"{SHIM_NAME}.py"
    assert installed.is_file() and (site / f"{SHIM_NAME}.pth").is_file(), f"no shim in {site}: {SETUP_HINT}"
    assert installed.read_text() == SHIM_SOURCE.read_text(), f"{installed} is older than {SHIM_SOURCE}: {SETUP_HINT}"


def test_interpreter_start_does_not_import_torch():
    code = "import sys; print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision')))"
    result = _python(f"import sys; assert {SHIM_NAME!r} in sys.modules; {code}")
    assert result.returncode == 0, result.stderr[-3000:] + "\n" + SETUP_HINT
    assert result.stdout.strip() == "[]", f"start-up imported {result.stdout.strip()}"


def test_open_clip_and_transformers_import_and_preprocess_without_conftest():
    result = _python(
        """
        import open_clip
        import transformers
        from transformers import CLIPImageProcessor, CLIPProcessor, pipeline
        from PIL import Image

        image = Image.new("RGB", (40, 30), (200, 100, 50))
        _, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None)
        print(tuple(preprocess(image).shape))
        pixels = CLIPImageProcessor()(images=image, return_tensors="pt")["pixel_values"]
        print(tuple(pixels.shape))
        """
    )
    assert result.returncode == 0, result.stderr[-3000:] + "\n" + SETUP_HINT
    assert result.stdout.split("\n")[:2] == ["(3, 224, 224)", "(1, 3, 224, 224)"]


def test_shim_source_works_when_loaded_by_hand():
    """The file in scripts/ itself (not the installed copy): site disabled (-S), so no .pth runs."""
    result = _python(
        f"""
        import importlib.util, sys
        sys.path.append({str(_site_packages())!r})
        assert {SHIM_NAME!r} not in sys.modules
        spec = importlib.util.spec_from_file_location("shim", {str(SHIM_SOURCE)!r})
        shim = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(shim)
        shim.install()
        shim.install()  # idempotent: still one finder
        assert sum(isinstance(f, shim.TorchvisionSchemaFinder) for f in sys.meta_path) == 1
        assert "torch" not in sys.modules
        import torchvision.transforms
        assert not any(isinstance(f, shim.TorchvisionSchemaFinder) for f in sys.meta_path)  # it stepped aside
        assert shim.define_missing_schemas() == []  # a second call finds both schemas defined
        print("ok")
        """,
        "-S",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "ok"


@pytest.mark.parametrize("order", ["conftest_first", "shim_first"])
def test_shim_and_conftest_definitions_coexist(order):
    """tests/conftest.py defines the same schemas; whichever runs first, the other must not fail."""
    conftest = (REPO / "tests" / "conftest.py").read_text()
    body = (
        "exec(CONFTEST)\nimport torchvision\n" if order == "conftest_first" else "import torchvision\nexec(CONFTEST)\n"
    )
    result = _python(f"CONFTEST = {conftest!r}\n{body}import torchvision.transforms.v2\nprint('ok')")
    assert result.returncode == 0, result.stderr[-3000:] + "\n" + SETUP_HINT
    assert result.stdout.strip() == "ok"
