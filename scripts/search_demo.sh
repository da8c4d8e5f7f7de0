#!/usr/bin/env bash
# The README's search demo: set up the environment, train a small CLIP on the Noto emoji (their names as
# captions), export the emoji as PNGs, build a search index, run text queries and a query by example, and print
# the command that opens the search page. ~5 min on 2 CPU cores; rerunning reuses the export, model and index.
# Arguments go to scripts/search_demo.py: --smoke (40 emoji, 8 training steps), --out DIR, --limit N, --max-steps N.
set -euo pipefail
cd "$(dirname "$0")/.."
CLIPFORGE_EXTRAS=${CLIPFORGE_EXTRAS:-search,collections,plots} bash scripts/setup.sh
font=/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf
if [ ! -f "$font" ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends fonts-noto-color-emoji >/dev/null
  else
    echo "the demo needs the Noto Color Emoji font: sudo apt-get install -y fonts-noto-color-emoji" >&2
    exit 1
  fi
fi
.venv/bin/python scripts/search_demo.py "$@"
