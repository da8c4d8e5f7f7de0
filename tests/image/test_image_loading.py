"""`load_image`: EXIF orientation, the decompression-bomb guard, errors that name the file, batch helper."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from clipforge.image import (
    EvalTransform,
    ImageLoadError,
    ImageTooLargeError,
    load_image,
    preprocess_batch,
)
from clipforge.models.config import PreprocessConfig

# EXIF orientation -> the numpy operation that shows the stored pixels upright (EXIF 2.32, tag 0x0112).
UPRIGHT = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],  # mirrored horizontally
    3: lambda a: np.rot90(a, 2),
    4: lambda a: a[::-1],  # mirrored vertically
    5: lambda a: np.swapaxes(a, 0, 1),  # transpose
    6: lambda a: np.rot90(a, -1),  # rotate 90 degrees clockwise
    7: lambda a: np.rot90(a, 2).swapaxes(0, 1),  # transverse
    8: lambda a: np.rot90(a, 1),  # rotate 90 degrees counter-clockwise
}


def _jpeg_with_orientation(photo: Image.Image, orientation: int, path) -> np.ndarray:
    """Write `photo` as a JPEG tagged with `orientation`; return its decoded, stored (untransformed) pixels."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    photo.save(path, format="JPEG", quality=95, exif=exif.tobytes())
    with Image.open(path) as stored:
        assert stored.getexif()[0x0112] == orientation
        return np.asarray(stored.convert("RGB"))


@pytest.mark.parametrize("orientation", sorted(UPRIGHT))
def test_exif_orientation_is_applied(photos, tmp_path, orientation):
    photo = photos["chelsea"].crop((0, 0, 120, 80))  # landscape, so a quarter turn shows in the shape
    stored = _jpeg_with_orientation(photo, orientation, tmp_path / "tagged.jpg")
    loaded = load_image(tmp_path / "tagged.jpg")
    assert loaded.mode == "RGB"
    assert np.array_equal(np.asarray(loaded), UPRIGHT[orientation](stored))
    assert loaded.size == ((80, 120) if orientation >= 5 else (120, 80))


def test_exif_orientation_applied_to_opened_pil_image_and_file_objects(photos, tmp_path):
    stored = _jpeg_with_orientation(photos["coffee"].crop((0, 0, 90, 60)), 6, tmp_path / "six.jpg")
    with Image.open(tmp_path / "six.jpg") as lazy:
        assert np.array_equal(np.asarray(load_image(lazy)), np.rot90(stored, -1))
    with open(tmp_path / "six.jpg", "rb") as file:
        assert np.array_equal(np.asarray(load_image(file)), np.rot90(stored, -1))
    assert np.array_equal(np.asarray(load_image((tmp_path / "six.jpg").read_bytes())), np.rot90(stored, -1))


def test_upright_rgb_pil_image_is_returned_as_is(photos):
    assert load_image(photos["astronaut"]) is photos["astronaut"]


def _png(path, width: int, height: int) -> None:
    Image.new("RGB", (width, height), (10, 20, 30)).save(path)


def test_decompression_bomb_is_refused_with_file_pixel_count_and_remedy(tmp_path):
    path = tmp_path / "bomb.png"
    _png(path, 200, 50)  # 10,000 pixels
    with pytest.raises(ImageTooLargeError) as caught:
        load_image(path, max_pixels=9_999)
    message = str(caught.value)
    assert str(path) in message and "200x50" in message and "10,000 pixels" in message and "9,999" in message
    assert "max_pixels=10000" in message
    assert isinstance(caught.value, ImageLoadError)
    assert load_image(path, max_pixels=10_000).size == (200, 50)
    assert load_image(path, max_pixels=None).size == (200, 50)
    with pytest.raises(ImageTooLargeError, match="10,000 pixels"):
        load_image(Image.open(path), max_pixels=100)


def test_pillow_global_limit_is_overridden_per_call_and_restored(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    _png(path, 200, 50)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000)  # Pillow alone would refuse over 2,000 pixels
    assert load_image(path).size == (200, 50)  # the per-call default (Pillow's default limit) allows it
    assert Image.MAX_IMAGE_PIXELS == 1_000
    with pytest.raises(ImageTooLargeError, match=r"big\.png.*10,000 pixels"):
        load_image(path, max_pixels=500)  # within Pillow's limit: Pillow's own check fires, reported as ours
    assert Image.MAX_IMAGE_PIXELS == 1_000


def test_corrupt_file_names_the_file(tmp_path):
    path = tmp_path / "junk.jpg"
    path.write_bytes(b"this is not an image at all" * 10)
    with pytest.raises(ImageLoadError, match=r"junk\.jpg"):
        load_image(path)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_file_names_the_file(photos, tmp_path, fmt):
    path = tmp_path / f"cut.{fmt.lower()}"
    buffer = io.BytesIO()
    photos["astronaut"].save(buffer, format=fmt)
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(ImageLoadError, match=rf"cut\.{fmt.lower()}"):
        load_image(path)


def test_bytes_errors_use_the_given_name():
    with pytest.raises(ImageLoadError, match=r"shard-7\.tar/0042\.jpg"):
        load_image(b"\xff\xd8\xff garbage", name="shard-7.tar/0042.jpg")


def test_missing_file_is_a_plain_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_image(tmp_path / "absent.png")


def test_preprocess_batch_mixes_pil_images_and_paths(photos, tmp_path):
    cfg = PreprocessConfig(size=64)
    transform = EvalTransform(cfg)
    photos["rocket"].save(tmp_path / "rocket.png")
    batch = preprocess_batch([photos["astronaut"], tmp_path / "rocket.png", photos["camera"]], transform)
    assert batch.shape == (3, 3, 64, 64) and batch.dtype == torch.float32
    assert torch.equal(batch[0], transform(photos["astronaut"]))
    assert torch.equal(batch[1], transform(photos["rocket"]))  # PNG is lossless
    assert torch.equal(batch[2], transform(photos["camera"]))
    with pytest.raises(ValueError, match="no images"):
        preprocess_batch([], transform)


@pytest.mark.skipif(not hasattr(__import__("os"), "mkfifo"), reason="named pipes need a POSIX system")
def test_fifo_and_directory_are_refused_without_blocking(tmp_path):
    import os
    import threading

    fifo = tmp_path / "stray.png"
    os.mkfifo(fifo)
    outcome: list = []

    def load() -> None:
        try:
            load_image(fifo)
        except Exception as exc:  # the test inspects whatever was raised
            outcome.append(exc)

    worker = threading.Thread(target=load, daemon=True)  # a blocking open() of a FIFO never returns
    worker.start()
    worker.join(timeout=20)
    assert not worker.is_alive(), "load_image blocked on a FIFO"
    assert isinstance(outcome[0], OSError) and "a FIFO (named pipe), not a regular image file" in str(outcome[0])
    with pytest.raises(IsADirectoryError, match="give an image file"):
        load_image(tmp_path)
    Image.new("RGB", (4, 4)).save(tmp_path / "ok.png")
    assert load_image(tmp_path / "ok.png").size == (4, 4)  # regular files still load through the same path
