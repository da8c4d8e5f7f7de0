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
extras=${CLIPFORGE_EXTRAS:-test}
.venv/bin/pip install -q -c constraints.txt -e ".[${extras}]"
