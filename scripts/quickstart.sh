#!/usr/bin/env bash
# The README's main-job command: set up the environment (venv, packages, Fashion-MNIST), train a
# small CLIP on Fashion-MNIST to >= 85% zero-shot top-1, show predictions, save model and plot.
set -euo pipefail
cd "$(dirname "$0")/.."
CLIPFORGE_EXTRAS=${CLIPFORGE_EXTRAS:-demo} bash scripts/setup.sh
.venv/bin/python scripts/quickstart.py "$@"
