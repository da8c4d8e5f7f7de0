#!/usr/bin/env bash
# Creates .venv (if missing) and installs clipforge with its test extras, keeping torch at the local
# CPU wheel 2.13.0 (constraints.txt stops any dependency from pulling a CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/pip install -q -c constraints.txt torch==2.13.0
# Offline datasets packaged by Debian: Fashion-MNIST is the quickstart's training and
# zero-shot set; the Tux Paint stamps are real image+caption pairs used by the data tests.
need=()
[ -f /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ] || need+=(dataset-fashion-mnist)
if [ "${CLIPFORGE_EXTRAS:-test}" = test ] && [ ! -d /usr/share/tuxpaint/stamps ]; then
  need+=(tuxpaint-stamps-default)
fi
# Search tests: clip-art and emoji collections, and a headless browser for the web page's test.
if [ "${CLIPFORGE_EXTRAS:-test}" = test ]; then
  [ -d /usr/share/openclipart/svg ] || need+=(openclipart-svg)
  [ -f /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf ] || need+=(fonts-noto-color-emoji)
  command -v chromium >/dev/null 2>&1 || need+=(chromium)
  command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
fi
if [ ${#need[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  else
    echo "note: missing datasets; install them with: sudo apt-get install -y --no-install-recommends ${need[*]}" >&2
  fi
fi
extras=${CLIPFORGE_EXTRAS:-test}
.venv/bin/pip install -q -c constraints.txt -e ".[${extras}]"
# The PyPI torchvision wheel is a CUDA build whose import fails next to the CPU torch ("operator
# torchvision::nms does not exist"); scripts/torchvision_cpu_shim.py defines the two missing operator
# schemas when torchvision is imported, so open_clip and transformers import in this venv. Dev-only:
# clipforge itself never imports torchvision.
site=$(.venv/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
cp scripts/torchvision_cpu_shim.py "$site/clipforge_torchvision_cpu_shim.py"
echo "import clipforge_torchvision_cpu_shim; clipforge_torchvision_cpu_shim.install()" \
  > "$site/clipforge_torchvision_cpu_shim.pth"
