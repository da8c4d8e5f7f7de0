"""Known-answer tests for `to_rgb`: hand-built images of every mode whose correct RGB is known exactly."""

import io

import numpy as np
import pytest
from PIL import Image

from clipforge.image import load_image, to_rgb


def _rgb(image: Image.Image, **kwargs) -> np.ndarray:
    out = to_rgb(image, **kwargs)
    assert out.mode == "RGB" and out.size == image.size
    return np.asarray(out)


def _grey(values) -> np.ndarray:
    """Expected RGB of grey levels: the level in all three channels, (..., 3)."""
    values = np.asarray(values, dtype=np.uint8)
    return np.repeat(values[..., None], 3, axis=-1)


def test_rgb_is_returned_unchanged():
    image = Image.new("RGB", (3, 2), (1, 2, 3))
    assert to_rgb(image) is image


def test_grey_and_one_bit_replicate():
    ramp = np.arange(256, dtype=np.uint8).reshape(16, 16)
    assert np.array_equal(_rgb(Image.fromarray(ramp)), _grey(ramp))
    bits = Image.fromarray(np.array([[True, False, True]]))
    assert bits.mode == "1"
    assert np.array_equal(_rgb(bits), _grey([[255, 0, 255]]))


def test_sixteen_bit_ramp_scales_to_eight_bits():
    ramp = np.arange(0, 65536, dtype=np.uint32)
    ramp = ramp.astype(np.uint16).reshape(256, 256)  # every 16-bit value once
    expected = _grey(np.floor(ramp / 257.0 + 0.5))  # round(v / 257); 257 is odd, so no ties
    image = Image.fromarray(ramp)
    assert image.mode == "I;16"
    assert np.array_equal(_rgb(image), expected)
    # The big-endian variant (TIFF/PNG byte order) holds the same values.
    big = Image.frombytes("I;16B", image.size, ramp.astype(">u2").tobytes())
    assert np.array_equal(_rgb(big), expected)
    assert _rgb(image)[0, 0].tolist() == [0, 0, 0] and _rgb(image)[-1, -1].tolist() == [255, 255, 255]


def test_sixteen_bit_png_file_loads_scaled():
    ramp = (np.arange(64, dtype=np.uint16) * 1040).reshape(8, 8)  # 0 .. 65520
    buffer = io.BytesIO()
    Image.fromarray(ramp).save(buffer, format="PNG")
    expected = _grey(np.floor(ramp / 257.0 + 0.5))
    assert np.array_equal(np.asarray(load_image(buffer.getvalue())), expected)


def test_thirty_two_bit_integers_read_as_sixteen_bit_and_clipped():
    values = np.array([[-5, 0, 257, 65535, 70000]], dtype=np.int32)
    image = Image.fromarray(values)
    assert image.mode == "I"
    assert np.array_equal(_rgb(image), _grey([[0, 0, 1, 255, 255]]))


def test_float_read_as_unit_interval_clipped_and_rounded():
    values = np.array([[-0.5, 0.0, 0.25, 0.5, 1.0, 2.0, np.nan]], dtype=np.float32)
    image = Image.fromarray(values)
    assert image.mode == "F"
    # 0.25 * 255 = 63.75 -> 64; 0.5 * 255 = 127.5 -> 128 (round half to even); NaN -> 0.
    assert np.array_equal(_rgb(image), _grey([[0, 0, 64, 128, 255, 255, 0]]))


def test_rgba_composited_on_white_by_default_and_on_any_background(composite_over):
    pixels = np.array([[[200, 100, 0, 0], [200, 100, 0, 128], [200, 100, 0, 255], [10, 20, 30, 1]]], np.uint8)
    image = Image.fromarray(pixels)
    assert image.mode == "RGBA"
    white = _rgb(image)
    assert white[0, 0].tolist() == [255, 255, 255]  # fully transparent: the background
    assert white[0, 2].tolist() == [200, 100, 0]  # opaque: the colour
    assert white[0, 1].tolist() == [227, 177, 127]  # round((c * 128 + 255 * 127) / 255)
    assert np.array_equal(white, composite_over(pixels, (255, 255, 255)))
    assert np.array_equal(_rgb(image, background=(0, 0, 0)), composite_over(pixels, (0, 0, 0)))
    assert np.array_equal(_rgb(image, background=128), composite_over(pixels, (128, 128, 128)))


def test_rgba_composite_matches_reference_on_a_photo(transparent_photo, composite_over):
    pixels = np.asarray(transparent_photo)
    assert np.array_equal(_rgb(transparent_photo), composite_over(pixels, (255, 255, 255)))
    assert np.array_equal(_rgb(transparent_photo, background=(0, 64, 255)), composite_over(pixels, (0, 64, 255)))


def test_opaque_rgba_drops_alpha():
    pixels = np.random.default_rng(0).integers(0, 256, (5, 7, 4), dtype=np.uint8)
    pixels[..., 3] = 255
    assert np.array_equal(_rgb(Image.fromarray(pixels)), pixels[..., :3])


def test_grey_with_alpha():
    pixels = np.array([[[90, 0], [90, 255], [0, 51]]], np.uint8)  # LA
    image = Image.frombytes("LA", (3, 1), pixels.tobytes())
    # 0 * 51 + 255 * 204 = 52020 -> 204
    assert np.array_equal(_rgb(image), _grey([[255, 90, 204]]))
    assert np.array_equal(_rgb(image.convert("La")), _grey([[255, 90, 204]]))


def _palette_image() -> Image.Image:
    image = Image.frombytes("P", (3, 1), bytes([0, 1, 2]))
    image.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255])  # red, green, blue
    return image


def test_palette_with_transparent_index_over_white():
    image = _palette_image()
    assert np.array_equal(_rgb(image), [[[255, 0, 0], [0, 255, 0], [0, 0, 255]]])
    image.info["transparency"] = 1  # green is the transparent index (GIF style)
    assert np.array_equal(_rgb(image), [[[255, 0, 0], [255, 255, 255], [0, 0, 255]]])
    assert np.array_equal(_rgb(image, background=0), [[[255, 0, 0], [0, 0, 0], [0, 0, 255]]])


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_transparency_survives_a_file_round_trip(fmt):
    image = _palette_image()
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, transparency=1)
    assert np.array_equal(np.asarray(load_image(buffer.getvalue())), [[[255, 0, 0], [255, 255, 255], [0, 0, 255]]])


def test_palette_with_per_index_alpha():
    image = _palette_image()
    image.info["transparency"] = bytes([255, 255, 0])  # PNG tRNS: blue fully transparent
    assert np.array_equal(_rgb(image), [[[255, 0, 0], [0, 255, 0], [255, 255, 255]]])
    assert np.array_equal(_rgb(image.convert("PA")), [[[255, 0, 0], [0, 255, 0], [255, 255, 255]]])


def test_rgb_colour_key_transparency():
    image = Image.frombytes("RGB", (2, 1), bytes([1, 2, 3, 4, 5, 6]))
    image.info["transparency"] = (4, 5, 6)  # PNG tRNS for truecolour
    assert np.array_equal(_rgb(image), [[[1, 2, 3], [255, 255, 255]]])


def test_cmyk_and_ycbcr():
    cmyk = Image.frombytes("CMYK", (4, 1), bytes([0, 0, 0, 0, 255, 0, 0, 0, 0, 0, 255, 0, 0, 0, 0, 255]))
    assert np.array_equal(_rgb(cmyk), [[[255, 255, 255], [0, 255, 255], [255, 255, 0], [0, 0, 0]]])
    ycbcr = Image.frombytes("YCbCr", (2, 1), bytes([128, 128, 128, 255, 128, 128]))
    assert np.array_equal(_rgb(ycbcr), [[[128, 128, 128], [255, 255, 255]]])


def test_bad_background_is_rejected():
    image = Image.new("RGBA", (1, 1))
    with pytest.raises(ValueError, match="background"):
        to_rgb(image, background=(255, 255))
    with pytest.raises(ValueError, match="background"):
        to_rgb(image, background=256)
