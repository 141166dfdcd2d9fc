"""Lanczos resizing of float images, in float all the way."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from megasr.imaging.resize import resize


def test_keeps_layout_and_dtype() -> None:
    rgb = np.random.default_rng(0).random((10, 12, 3), dtype=np.float32)

    assert resize(rgb, 30, 20).shape == (20, 30, 3)
    assert resize(rgb, 30, 20).dtype == np.float32
    assert resize(rgb[..., 0], 5, 4).shape == (4, 5)


def test_keeps_precision_finer_than_8_bits() -> None:
    plane = np.full((8, 8), 1000 / 65535, dtype=np.float32)

    assert np.abs(resize(plane, 21, 13) - 1000 / 65535).max() < 1e-6


def test_reproduces_a_linear_ramp_in_the_interior() -> None:
    """Lanczos is exact on straight lines: sample centres land on the ramp away from edges."""
    width = 64
    ramp = np.tile(np.arange(width, dtype=np.float32) / (width - 1), (4, 1))

    out = resize(ramp, 32, 4)

    centres = (np.arange(32) + 0.5) * 2 - 0.5
    assert np.abs(out[:, 4:-4] - centres[4:-4] / (width - 1)).max() < 1e-4


def test_channels_are_resized_independently_like_pillow() -> None:
    y, x = np.mgrid[0:9, 0:11]
    # Smooth and mid-range, so Pillow's 8-bit path never clips between its two passes.
    gray = (128 + 60 * np.sin(x / 3) * np.cos(y / 4)).astype(np.uint8)
    expected = np.asarray(Image.fromarray(gray).resize((33, 27), Image.Resampling.LANCZOS))

    out = resize(np.dstack([gray / 255, 1 - gray / 255]).astype(np.float32), 33, 27)

    assert np.abs(out[..., 0] * 255 - expected).max() <= 1.5  # Pillow rounds after each pass
    assert np.abs(out[..., 0] + out[..., 1] - 1).max() < 1e-5


def test_overshoot_at_hard_edges_is_clipped() -> None:
    edge = np.zeros((8, 8), dtype=np.float32)
    edge[:, 4:] = 1.0
    unclipped = np.asarray(Image.fromarray(edge).resize((32, 32), Image.Resampling.LANCZOS))

    out = resize(edge, 32, 32)

    assert unclipped.max() > 1.0 and unclipped.min() < 0.0  # Lanczos rings
    assert out.max() == 1.0 and out.min() == 0.0


def test_same_size_is_returned_as_is() -> None:
    rgb = np.random.default_rng(2).random((5, 6, 3), dtype=np.float32)

    assert np.array_equal(resize(rgb, 6, 5), rgb)


@pytest.mark.parametrize(("width", "height"), [(0, 5), (5, 0)])
def test_empty_target_is_refused(width: int, height: int) -> None:
    with pytest.raises(ValueError, match=f"cannot resize to {width}x{height}"):
        resize(np.zeros((4, 4), np.float32), width, height)
