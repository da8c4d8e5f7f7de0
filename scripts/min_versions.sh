#!/usr/bin/env bash
# Checks that the dependency floors in pyproject.toml really work: builds a separate venv (.venv-min) holding
# exactly the lowest version each `name>=floor` allows, installs clipforge into it from a built wheel (so the
# package data and py.typed are checked too) without letting pip pick dependencies, and runs a fast test
# subset (public API, models, weights, text, image, CLI, examples) against that install.
#
# torch is the exception: torch 2.13.0 (CPU) is the only torch wheel this CI machine can install, so it stays
# at 2.13.0 here (constraints.txt pins it) and the `torch>=` floor in pyproject.toml is NOT exercised by this
# script; its floor in pyproject.toml comes from the APIs clipforge calls (fused AdamW on CPU: 2.4, public FSDP2
# `torch.distributed.fsdp.fully_shard`: 2.6). Tests that need transformers skip themselves in this venv.
#
#   bash scripts/min_versions.sh              # create/refresh .venv-min and run the subset
#   MIN_VENV=/tmp/venv-min bash scripts/min_versions.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${MIN_VENV:-.venv-min}
TORCH_HERE=2.13.0

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/pip" install -q --upgrade pip >/dev/null 2>&1 || true

# name==floor for every core dependency; a dependency without a `>=` floor is an error, not a silent skip.
"$VENV/bin/python" - "$TORCH_HERE" >"$VENV/min-constraints.txt" <<'EOF'
import re
import sys

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the TOML reader pip itself vendors
    from pip._vendor import tomli as tomllib

torch_here = sys.argv[1]
with open("pyproject.toml", "rb") as f:
    deps = tomllib.load(f)["project"]["dependencies"]
for dep in deps:
    m = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)\s*>=\s*([^,;\s]+)\s*(?:,.*)?", dep)
    if m is None:
        sys.exit(f"pyproject.toml: dependency {dep!r} has no '>=' floor; give it one so its minimum can be tested")
    name, floor = m.groups()
    if name.lower() == "torch":
        print(f"# torch floor {floor} is not installable on this machine; testing with {torch_here}")
        print(f"torch=={torch_here}")
    else:
        print(f"{name}=={floor}")
EOF
echo "min_versions: installing"
grep -v '^#' "$VENV/min-constraints.txt" | sed 's/^/  /'

# -c constraints.txt keeps the local CPU torch wheel: nothing may pull a CUDA build. pytest, scikit-image (its
# photos feed the image tests) and open_clip (the parity reference) are test tools resolved against the floors,
# not floors themselves; transformers needs newer huggingface_hub/tokenizers, so its tests skip here.
"$VENV/bin/pip" install -q -c constraints.txt -c "$VENV/min-constraints.txt" -r "$VENV/min-constraints.txt" \
  "pytest>=8" "scikit-image>=0.22" "open_clip_torch==3.3.0" "torchvision==0.28.0"
rm -rf "$VENV/wheel" && mkdir -p "$VENV/wheel"
"$VENV/bin/pip" wheel -q --no-deps -w "$VENV/wheel" .
"$VENV/bin/pip" install -q --no-deps --force-reinstall "$VENV"/wheel/clipforge-*.whl
"$VENV/bin/pip" check

# The floors are what is installed (pip did not quietly resolve something newer).
"$VENV/bin/python" - "$VENV/min-constraints.txt" <<'EOF'
import sys
from importlib.metadata import version

import clipforge



def release(text: str) -> list[int]:
    """'1.24' and '1.24.0' are the same release (PEP 440 pads with zeros); the local '+cpu' tag is ignored."""
    parts = [int(p) for p in text.split("+")[0].split(".")]
    while parts and parts[-1] == 0:
        parts.pop()
    return parts


bad = []
for line in open(sys.argv[1]):
    if line.startswith("#") or not line.strip():
        continue
    name, want = line.strip().split("==")
    have = version(name)
    if release(have) != release(want):
        bad.append(f"{name}: wanted {want}, installed {have}")
if bad:
    sys.exit("min_versions: " + "; ".join(bad))
print(f"min_versions: clipforge {clipforge.__version__} from {clipforge.__file__}")
EOF

# Run from the repository root: tests/ is on the path, src/ is not, so the installed wheel is what is tested.
# Left out: full-size architectures (same torch, no dependency floor involved; the main suite runs them) and
# tests/weights/test_reference_env.py (it checks the dev venv's torchvision shim that setup.sh installs), and the
# search CLIs' tests (their faiss/pyarrow/FastAPI come from the optional `search` extra, not the core floors).
"$VENV/bin/python" -m pytest -q -p no:cacheprovider -m "not slow" -k "not full_size" \
  --ignore=tests/weights/test_reference_env.py \
  --ignore=tests/cli/test_index_cli.py --ignore=tests/cli/test_search_cli.py \
  tests/test_api.py tests/models tests/weights tests/text tests/image tests/cli tests/examples "$@"
