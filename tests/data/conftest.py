"""Small synthetic datasets for the data-layer tests: PIL images written in tmp folders, CSVs and tar shards.

Every sample's caption is unique ("caption 7"), so a batch's tokens say which samples it holds.
"""

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipforge.image import build_transform
from clipforge.models.config import PreprocessConfig
from clipforge.text import CLIPTokenizer

IMAGE_SIZE = 12  # model input side for the synthetic sets


def image_bytes(index: int, fmt: str = "PNG", size: tuple[int, int] = (14, 10)) -> bytes:
    """A small RGB image whose pixels depend on `index`, encoded as `fmt`."""
    rng = np.random.default_rng(index)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format=fmt)
    return out.getvalue()


@pytest.fixture(scope="session")
def tokenizer():
    return CLIPTokenizer(context_length=12)


@pytest.fixture
def train_transform():
    return build_transform(PreprocessConfig(size=IMAGE_SIZE), train=True)


@pytest.fixture
def eval_transform():
    return build_transform(PreprocessConfig(size=IMAGE_SIZE))


def write_folder(root: Path, count: int, start: int = 0) -> Path:
    """`count` images (x.png + x.txt) under root, half of them in a subfolder."""
    for i in range(start, start + count):
        folder = root / ("sub" if i % 2 else "")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"img{i:04d}.png").write_bytes(image_bytes(i))
        (folder / f"img{i:04d}.txt").write_text(f"caption {i}\n", encoding="utf-8")
    return root


def write_csv(root: Path, count: int, prefix: str = "caption", sep: str = ",") -> Path:
    """A CSV (relative image paths, open_clip's columns) of `count` images."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    lines = [f"filepath{sep}title"]
    for i in range(count):
        (root / "images" / f"{prefix}{i}.png").write_bytes(image_bytes(i + (1000 if prefix != "caption" else 0)))
        lines.append(f"images/{prefix}{i}.png{sep}{prefix} {i}")
    path = root / ("data.tsv" if sep == "\t" else "data.csv")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def sample_members(index: int, caption: str | None = None, fmt: str = "PNG") -> list[tuple[str, bytes]]:
    key = f"{index:09d}"
    ext = {"PNG": "png", "JPEG": "jpg"}[fmt]
    text = f"caption {index}" if caption is None else caption
    return [
        (f"{key}.{ext}", image_bytes(index, fmt)),
        (f"{key}.txt", text.encode()),
        (f"{key}.json", json.dumps({"key": key}).encode()),
    ]


def write_shard_set(root: Path, shards: int, per_shard: int) -> str:
    """`shards` clean shards of `per_shard` samples; returns the brace spec."""
    for s in range(shards):
        members = [m for i in range(s * per_shard, (s + 1) * per_shard) for m in sample_members(i)]
        write_tar(root / f"shard-{s:06d}.tar", members)
    return str(root / f"shard-{{000000..{shards - 1:06d}}}.tar")


def captions(batches, tokenizer) -> list[str]:
    """Decoded captions of all batches, in order."""
    return [tokenizer.decode(row, skip_special_tokens=True).strip() for b in batches for row in b.tokens]


def sample_id(caption: str) -> int:
    """The number in a decoded caption ("caption 1 7" -> 17: CLIP's BPE splits digits)."""
    return int("".join(ch for ch in caption if ch.isdigit()))


def assert_same_batches(got, expected) -> None:
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        assert a.images.shape == b.images.shape
        assert (a.images == b.images).all()  # same code path, same seeds: bit-identical
        assert (a.tokens == b.tokens).all()
        assert a.bad == b.bad


class Synth:
    """The helpers above, handed to tests as the `synth` fixture (tests cannot import a conftest by name)."""

    image_bytes = staticmethod(image_bytes)
    write_folder = staticmethod(write_folder)
    write_csv = staticmethod(write_csv)
    write_tar = staticmethod(write_tar)
    sample_members = staticmethod(sample_members)
    write_shard_set = staticmethod(write_shard_set)
    captions = staticmethod(captions)
    sample_id = staticmethod(sample_id)
    assert_same_batches = staticmethod(assert_same_batches)


@pytest.fixture(scope="session")
def synth():
    return Synth
