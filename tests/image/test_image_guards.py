"""Guards on what image input may cost: aspect-ratio bombs, formats that run programs, oversized files.

Each guard refuses with an ImageLoadError subclass, which every job catches to skip and count the image; the
tests check that the refusal comes *before* the expensive or dangerous step (a huge resize, Ghostscript, reading
an endless stream), by making that step fail loudly if it is ever reached.
"""

import io
import json

import pytest
import torch
from PIL import EpsImagePlugin, Image

import clipforge
from clipforge.cli.main import main as cli
from clipforge.image import (
    ALLOWED_FORMATS,
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_RESIZE_PIXELS,
    EvalTransform,
    ImageAspectError,
    ImageLoadError,
    ImageTooLargeError,
    TrainTransform,
    load_image,
)
from clipforge.models.config import PreprocessConfig

BOMB_SIDE = 100_000


@pytest.fixture()
def no_huge_resize(monkeypatch):
    """Make any Image.resize to more than 10M pixels fail the test: the guards must refuse before that."""
    real_resize = Image.Image.resize

    def resize(self, size, *args, **kwargs):
        assert size[0] * size[1] <= 10_000_000, f"a {size[0]}x{size[1]} resize was attempted"
        return real_resize(self, size, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", resize)


@pytest.mark.parametrize("shape", [(1, BOMB_SIDE), (BOMB_SIDE, 1)], ids=["tall", "wide"])
def test_aspect_ratio_bomb_is_refused_before_resizing(tmp_path, no_huge_resize, shape):
    path = tmp_path / "bomb.png"
    Image.new("RGB", shape, (200, 10, 10)).save(path)
    image = load_image(path)  # only 100,000 pixels: the pixel-count guard rightly lets it through
    assert image.size == shape
    with pytest.raises(ImageAspectError) as caught:
        EvalTransform(PreprocessConfig(size=224))(image)
    message = str(caught.value)
    assert "22400000" in message and "100,000:1" in message and "aspect-ratio" in message
    assert isinstance(caught.value, ImageLoadError)  # what every job catches to skip and count an image
    # The same file opened lazily is named by its path in the error.
    with Image.open(path) as lazy, pytest.raises(ImageAspectError, match=r"bomb\.png"):
        EvalTransform(PreprocessConfig(size=224))(lazy)


@pytest.mark.parametrize("mode", ["longest", "squash"])
def test_modes_without_a_long_intermediate_take_the_bomb(no_huge_resize, mode):
    out = EvalTransform(PreprocessConfig(size=32, resize_mode=mode))(Image.new("RGB", (1, BOMB_SIDE), (9, 9, 9)))
    assert out.shape == (3, 32, 32)


def test_train_transform_takes_the_bomb_with_a_bounded_resize(no_huge_resize):
    gen = torch.Generator().manual_seed(0)
    out = TrainTransform(PreprocessConfig(size=32), generator=gen)(Image.new("RGB", (BOMB_SIDE, 1), (9, 9, 9)))
    assert out.shape == (3, 32, 32)


def test_resize_limit_is_exact_and_configurable(no_huge_resize):
    cfg = PreprocessConfig(size=32)
    tall = Image.new("RGB", (2, 2_000), (50, 60, 70))  # resized to 32 x 32,000 = 1,024,000 pixels
    assert EvalTransform(cfg, max_resize_pixels=1_024_000)(tall).shape == (3, 32, 32)
    with pytest.raises(ImageAspectError, match="1,024,000 pixels, over the limit of 1,023,999"):
        EvalTransform(cfg, max_resize_pixels=1_023_999)(tall)
    assert DEFAULT_MAX_RESIZE_PIXELS >= 224 * 224 * 300  # panoramas far beyond real ones still pass at 224 px
    with pytest.raises(ValueError, match="at least size"):
        EvalTransform(cfg, max_resize_pixels=100)


def test_classify_skips_aspect_bombs_and_lists_them(tmp_path, no_huge_resize, capsys):
    good = tmp_path / "good.png"
    Image.new("RGB", (40, 30), (120, 80, 40)).save(good)
    tall, wide = tmp_path / "tall.png", tmp_path / "wide.png"
    Image.new("RGB", (1, BOMB_SIDE)).save(tall)
    Image.new("RGB", (BOMB_SIDE, 1)).save(wide)
    torch.manual_seed(0)
    clipforge.save_model(clipforge.create_model("tiny-vit"), tmp_path / "model")
    paths = [str(good), str(tall), str(wide)]
    assert cli(["classify", *paths, "--labels", "a,b", "--pretrained", str(tmp_path / "model")]) == 0
    captured = capsys.readouterr()
    records = [json.loads(line) for line in captured.out.splitlines()]
    assert [r["image"] for r in records] == paths
    assert "label" in records[0]
    for record in records[1:]:
        assert "aspect-ratio bombs" in record["error"]
        assert f"skipped {record['image']}: " in captured.err


def _eps_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (0, 0, 255)).save(buffer, format="EPS")  # writing EPS needs no Ghostscript
    return buffer.getvalue()


def test_eps_named_jpg_is_refused_without_running_ghostscript(tmp_path, monkeypatch):
    import subprocess

    def forbidden(*args, **kwargs):
        raise AssertionError("an external program was started")

    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", forbidden)
    for name in ("Popen", "run", "call", "check_call", "check_output"):
        monkeypatch.setattr(subprocess, name, forbidden)
    path = tmp_path / "x.jpg"
    path.write_bytes(_eps_bytes())
    with Image.open(path) as probe:
        assert probe.format == "EPS"  # the file really is one Pillow would hand to its EPS plugin
    with pytest.raises(ImageLoadError, match=r"x\.jpg.*not an image of an allowed format.*EPS") as caught:
        load_image(path)
    assert "JPEG" in str(caught.value)
    with pytest.raises(ImageLoadError, match="allowed format"):
        load_image(path.read_bytes(), name="x.jpg")
    # Opting out of the allowlist reaches the plugin, and so the program: what the guard prevents.
    with pytest.raises(AssertionError, match="external program"):
        load_image(path, formats=None)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "PPM", "TGA", "ICO"])
def test_allowed_formats_load_whatever_the_file_is_named(tmp_path, fmt):
    assert fmt in ALLOWED_FORMATS
    path = tmp_path / "photo.jpg"  # the name does not matter, only the content
    size = (16, 16) if fmt == "ICO" else (16, 12)  # Pillow 10 writes no icon entry for a non-square image
    Image.new("RGB", size, (30, 160, 90)).save(path, format=fmt)
    loaded = load_image(path)
    assert loaded.mode == "RGB" and loaded.size == size


def test_formats_argument_narrows_the_allowlist(tmp_path):
    path = tmp_path / "p.png"
    Image.new("RGB", (4, 4)).save(path)
    assert load_image(path, formats=["png"]).size == (4, 4)
    with pytest.raises(ImageLoadError, match=r"allowed format \(JPEG\)"):
        load_image(path, formats=["JPEG"])
    with pytest.raises(TypeError, match="sequence"):
        load_image(path, formats="PNG")


def test_files_over_the_byte_cap_are_refused_before_reading(tmp_path, monkeypatch):
    assert DEFAULT_MAX_BYTES == 256 * 2**20
    huge = tmp_path / "huge.png"
    with open(huge, "wb") as file:  # a sparse file: no disk used, no bytes to read
        file.truncate(DEFAULT_MAX_BYTES + 1)
    monkeypatch.setattr(Image, "open", lambda *a, **k: pytest.fail("Image.open reached for an oversized file"))
    with pytest.raises(ImageTooLargeError) as caught:
        load_image(huge)
    message = str(caught.value)
    assert str(huge) in message and f"{DEFAULT_MAX_BYTES + 1:,} bytes" in message
    assert f"max_bytes={DEFAULT_MAX_BYTES + 1}" in message


def test_byte_cap_applies_to_bytes_and_streams(tmp_path):
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(buffer, format="PNG")
    data = buffer.getvalue()
    limit = len(data) - 1
    with pytest.raises(ImageTooLargeError, match="max_bytes="):
        load_image(data, max_bytes=limit)
    with pytest.raises(ImageTooLargeError, match="max_bytes="):
        load_image(io.BytesIO(data), max_bytes=limit)
    assert load_image(data, max_bytes=len(data)).size == (64, 64)
    assert load_image(io.BytesIO(data), max_bytes=len(data)).size == (64, 64)
    path = tmp_path / "p.png"
    path.write_bytes(data)
    with pytest.raises(ImageTooLargeError, match=r"p\.png"):
        load_image(path, max_bytes=limit)
    assert load_image(path, max_bytes=None).size == (64, 64)
    with pytest.raises(ValueError, match="max_bytes must be positive"):
        load_image(path, max_bytes=0)


class _EndlessZeros(io.RawIOBase):
    """A stream that cannot seek and never ends, like a pipe from /dev/zero; counts what was read."""

    def __init__(self) -> None:
        self.read_total = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        buffer[:] = bytes(len(buffer))
        self.read_total += len(buffer)
        return len(buffer)


def test_an_endless_stream_is_read_only_up_to_the_cap():
    stream = _EndlessZeros()
    with pytest.raises(ImageTooLargeError, match="over the limit of 1,000"):
        load_image(stream, max_bytes=1_000)
    assert stream.read_total <= 1_001 + io.DEFAULT_BUFFER_SIZE


class _Trickle(io.RawIOBase):
    """A stream that cannot seek and hands out at most 100 bytes per read, like a pipe."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = min(len(buffer), 100, len(self.data))
        buffer[:n], self.data = self.data[:n], self.data[n:]
        return n


def test_a_pipe_that_returns_short_reads_is_read_to_its_end():
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(buffer, format="BMP")  # 12 kB, so many short reads
    assert load_image(_Trickle(buffer.getvalue())).getpixel((5, 5)) == (1, 2, 3)


def test_training_data_counts_an_aspect_bomb_as_a_bad_sample(tmp_path, no_huge_resize):
    from clipforge.data import DataConfig, SourceConfig, TrainData
    from clipforge.image import build_transform
    from clipforge.text import CLIPTokenizer

    for i in range(4):
        Image.new("RGB", (20, 16), (40 * i, 90, 200)).save(tmp_path / f"img{i}.png")
        (tmp_path / f"img{i}.txt").write_text(f"caption {i}\n", encoding="utf-8")
    Image.new("RGB", (1, BOMB_SIDE)).save(tmp_path / "img4.png")
    (tmp_path / "img4.txt").write_text("a very tall image\n", encoding="utf-8")
    # One pass over the five files, so the bomb is drawn exactly once and a good file replaces it.
    cfg = DataConfig(
        sources=(SourceConfig("folder", str(tmp_path)),), batch_size=1, epoch_samples=5, max_bad_fraction=1.0
    )
    # The eval transform, as end-of-run evaluation feeds training data: deterministic, and it refuses the bomb.
    data = TrainData(cfg, build_transform(PreprocessConfig(size=32)), CLIPTokenizer(context_length=12))
    batches = list(data.epoch(0))
    assert len(batches) == 5 and all(b.images.shape == (1, 3, 32, 32) for b in batches)
    assert {name.rsplit("/", 1)[-1]: n for name, n in data.bad_counts.items()} == {"img4.png": 1}
