"""Quickstart: zero-shot classify real sample photos with the `clipforge classify` command.

Writes scikit-image's sample photos to ./outputs/quickstart/, then runs the CLI on them. Extra
arguments go to `clipforge classify` (e.g. `--model ViT-B-32 --pretrained laion2b_s34b_b79k`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from PIL import Image

from clipforge.cli.main import main as clipforge_main

PHOTOS = {"astronaut": "astronaut", "coffee": "coffee", "chelsea": "cat", "rocket": "rocket"}
LABELS = "astronaut,cup of coffee,cat,rocket,dog,car"


def write_sample_photos(folder: Path) -> list[str]:
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in PHOTOS:
        path = folder / f"{name}.jpg"
        Image.fromarray(getattr(data, name)()).save(path, quality=95)
        paths.append(str(path))
    return paths


def main(argv: list[str]) -> int:
    out = Path("outputs/quickstart")
    images = write_sample_photos(out / "photos")
    extra = argv or ["--model", "ViT-B-32"]
    if "--pretrained" not in extra:
        print(
            "NOTE: no pretrained weights are available offline; this model has RANDOM weights, so the labels "
            "below are not meaningful. The pipeline (preprocessing, tokenizer, prompt ensembling) is the real one."
        )
    result_path = out / "predictions.json"
    code = clipforge_main(["classify", *images, "--labels", LABELS, "--output", str(result_path), *extra])
    if code != 0:
        return code
    result = json.loads(result_path.read_text())
    for record in result["results"]:
        ranked = ", ".join(f"{r['label']} {r['prob']:.2f}" for r in record["top_k"])
        print(f"{Path(record['image']).name:<14} -> {ranked}")
    print(f"full JSON: {result_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
