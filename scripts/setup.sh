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
# Offline datasets from Debian (../shared/DATA.md): Fashion-MNIST is the quickstart's training and
# zero-shot set; the Tux Paint stamps are real image+caption pairs used by the data tests.
need=()
[ -f /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ] || need+=(dataset-fashion-mnist)
if [ "${CLIPFORGE_EXTRAS:-test}" = test ] && [ ! -d /usr/share/tuxpaint/stamps ]; then
  need+=(tuxpaint-stamps-default)
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
