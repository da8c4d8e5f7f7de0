#!/usr/bin/env bash
# The README's main-job command: set up the environment and run zero-shot classification of real
# sample photos (scikit-image's astronaut, coffee, cat, rocket) through the `clipforge` CLI.
# No pretrained weights exist offline, so the model's weights are RANDOM: the pipeline is real, the
# predictions are not meaningful. Pass --pretrained TAG_OR_PATH to use real weights.
set -euo pipefail
cd "$(dirname "$0")/.."
CLIPFORGE_EXTRAS=${CLIPFORGE_EXTRAS:-demo} bash scripts/setup.sh
.venv/bin/python scripts/quickstart.py "$@"
