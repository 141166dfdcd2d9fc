"""Encoding float images to PNG, JPEG and WebP, read back by Pillow and by the decoder."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from megasr.errors import InvalidParameterError
from megasr.imaging.decode import decode_image
from megasr.imaging.encode import (
    OUTPUT_FORMATS,
    default_output_format,
    encode_image,
    normalize_format,
)

RNG = np.random.default_rng(3)
RGB = RNG.random((12, 10, 3), dtype=np.float32)
ALPHA = RNG.random((12, 10), dtype=np.float32)
# A smooth picture with some texture, so lossy sizes respond to quality like photographs do.
_Y, _X = np.mgrid[0:64, 0:64] / 63.0
PHOTO = np.dstack([_X, _Y, (np.sin(_X * 20) * np.cos(_Y * 13) + 1) / 2]).astype(np.float32)


def _open(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def test_png_round_trip_keeps_alpha_to_the_8_bit_level() -> None:
    data = encode_image(RGB, ALPHA, "png")

    image = _open(data)
    decoded = decode_image(data)

    assert (image.format, image.mode) == ("PNG", "RGBA")
    assert np.abs(decoded.rgb - RGB).max() <= 0.5 / 255 + 1e-6
    assert decoded.alpha is not None
    assert np.abs(decoded.alpha - ALPHA).max() <= 0.5 / 255 + 1e-6


def test_png_carries_an_srgb_chunk() -> None:
    for bit_depth in (8, 16):
        assert _open(encode_image(RGB, None, "png", bit_depth=bit_depth)).info["srgb"] == 0


def test_webp_keeps_alpha() -> None:
    data = encode_image(RGB, ALPHA, "webp", quality=100)

    image = _open(data)
    decoded = decode_image(data)

    assert (image.format, image.mode) == ("WEBP", "RGBA")
    assert decoded.alpha is not None
    assert np.abs(decoded.alpha - ALPHA).max() <= 1 / 255 + 1e-6


def test_jpeg_composites_alpha_over_white() -> None:
    rgb = np.zeros((16, 16, 3), np.float32)  # black everywhere
    alpha = np.zeros((16, 16), np.float32)
    alpha[:, 8:] = 1.0  # left half transparent, right half opaque

    decoded = decode_image(encode_image(rgb, alpha, "jpeg", quality=95))

    assert decoded.alpha is None
    assert decoded.rgb[4, 2].min() > 0.95  # transparent black became white
    assert decoded.rgb[4, 13].max() < 0.05  # opaque black stayed black


@pytest.mark.parametrize("fmt", ["jpeg", "webp"])
def test_quality_changes_the_size(fmt: str) -> None:
    low = encode_image(PHOTO, None, fmt, quality=20)
    high = encode_image(PHOTO, None, fmt, quality=95)

    assert len(low) < len(high)
    assert (
        np.abs(decode_image(high).rgb - PHOTO).mean() < np.abs(decode_image(low).rgb - PHOTO).mean()
    )


def test_default_quality_is_used_when_none_is_given() -> None:
    assert encode_image(PHOTO, None, "jpeg") == encode_image(PHOTO, None, "jpeg", quality=90)


def test_16_bit_png_reads_back_exactly_in_pillow() -> None:
    gray = (np.arange(12 * 10).reshape(12, 10) * 541 % 65536).astype(np.float64) / 65535

    image = _open(encode_image(np.dstack([gray] * 3), None, "png", bit_depth=16, grayscale=True))

    assert image.mode == "I;16"
    assert np.array_equal(np.asarray(image), np.round(gray * 65535).astype(np.uint16))


@pytest.mark.parametrize(
    ("alpha", "grayscale", "color_type"),
    [(None, False, 2), (ALPHA, False, 6), (None, True, 0), (ALPHA, True, 4)],
    ids=["rgb", "rgba", "gray", "gray-alpha"],
)
def test_16_bit_png_stores_every_sample_exactly(
    alpha: np.ndarray | None, grayscale: bool, color_type: int
) -> None:
    """Unpack the file by the PNG spec, independently of the writer: chunks, CRCs, Sub filter."""
    data = encode_image(RGB, alpha, "png", bit_depth=16, grayscale=grayscale)

    chunks = _png_chunks(data)
    width, height, depth, kind = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[kind]
    raw = np.frombuffer(zlib.decompress(chunks[b"IDAT"]), np.uint8).reshape(height, -1)
    assert (width, height, depth, kind) == (10, 12, 16, color_type)
    assert set(raw[:, 0]) <= {0, 1}
    rows = raw[:, 1:].reshape(height, width, 2 * channels).astype(np.uint64)
    sub = raw[:, 0] == 1
    rows[sub] = np.cumsum(rows[sub], axis=1) % 256  # undo "Sub": add the pixel to the left
    samples = (rows.astype(np.uint8).reshape(height, -1).view(">u2")).reshape(height, width, -1)

    color = RGB @ np.array([0.299, 0.587, 0.114]) if grayscale else RGB
    planes = [color.reshape(height, width, -1)] + ([] if alpha is None else [alpha[..., None]])
    expected = np.round(np.clip(np.dstack(planes), 0, 1) * 65535).astype(np.uint16)
    assert np.abs(samples.astype(np.int64) - expected).max() <= 1
    decoded = decode_image(data)
    assert decoded.bit_depth == 16
    assert np.abs(decoded.rgb[..., 0] - samples[..., 0] / 65535).max() < 1e-6


def _png_chunks(data: bytes) -> dict[bytes, bytes]:
    """Chunk payloads by type (IDAT concatenated), checking every CRC."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks: dict[bytes, bytes] = {}
    position = 8
    while position < len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        kind = data[position + 4 : position + 8]
        payload = data[position + 8 : position + 8 + length]
        (crc,) = struct.unpack(">I", data[position + 8 + length : position + 12 + length])
        assert crc == zlib.crc32(kind + payload)
        chunks[kind] = chunks.get(kind, b"") + payload
        position += 12 + length
    assert list(chunks)[-1] == b"IEND"
    return chunks


def test_grayscale_is_written_as_one_channel() -> None:
    gray = np.repeat(RGB[..., :1], 3, axis=2)

    image = _open(encode_image(gray, ALPHA, "png", grayscale=True))

    assert image.mode == "LA"
    assert np.abs(np.asarray(image)[..., 0] / 255 - RGB[..., 0]).max() <= 0.5 / 255 + 1e-6


def test_jpeg_and_webp_are_8_bit_whatever_the_bit_depth() -> None:
    assert _open(encode_image(RGB, None, "jpeg", bit_depth=16)).mode == "RGB"
    assert _open(encode_image(RGB, None, "webp", bit_depth=16)).mode == "RGB"


def test_out_of_range_values_are_clipped() -> None:
    image = _open(encode_image(np.full((2, 2, 3), 1.7, np.float32) - [[[0, 0, 2]]], None, "png"))

    assert np.asarray(image)[0, 0].tolist() == [255, 255, 0]


@pytest.mark.parametrize("quality", [0, 101])
def test_quality_out_of_range_is_refused(quality: int) -> None:
    with pytest.raises(
        InvalidParameterError, match=f"quality must be between 1 and 100, got {quality}"
    ):
        encode_image(RGB, None, "jpeg", quality=quality)


def test_bit_depth_other_than_8_or_16_is_refused() -> None:
    with pytest.raises(InvalidParameterError, match="bit depth must be 8 or 16, got 12"):
        encode_image(RGB, None, "png", bit_depth=12)


@pytest.mark.parametrize(
    ("name", "canonical"),
    [("png", "png"), ("JPG", "jpeg"), (" jpeg ", "jpeg"), (".webp", "webp"), ("WebP", "webp")],
)
def test_normalize_format(name: str, canonical: str) -> None:
    assert normalize_format(name) == canonical


@pytest.mark.parametrize("name", ["bmp", "gif", "", "tiff"])
def test_unknown_output_format_is_refused(name: str) -> None:
    with pytest.raises(InvalidParameterError, match="output format must be one of png, jpeg, webp"):
        normalize_format(name)


@pytest.mark.parametrize(
    ("source", "output"),
    [
        ("png", "png"),
        ("jpeg", "jpeg"),
        ("JPG", "jpeg"),
        ("webp", "webp"),
        ("tiff", "png"),
        ("gif", "png"),
        ("bmp", "png"),
        ("heif", "png"),
        ("avif", "png"),
    ],
)
def test_default_output_format_follows_the_input(source: str, output: str) -> None:
    assert default_output_format(source) == output


def test_content_types_and_extensions() -> None:
    served = {name: (f.content_type, f.extension) for name, f in OUTPUT_FORMATS.items()}

    assert served == {
        "png": ("image/png", ".png"),
        "jpeg": ("image/jpeg", ".jpg"),
        "webp": ("image/webp", ".webp"),
    }
    for name, output in OUTPUT_FORMATS.items():
        assert _open(encode_image(RGB, None, name)).get_format_mimetype() == output.content_type
