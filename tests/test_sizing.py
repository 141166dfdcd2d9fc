"""Output-size semantics: scale, width only, height only, both, limits."""

from __future__ import annotations

import pytest

from megasr.errors import ImageTooLargeError, InvalidParameterError
from megasr.imaging.sizing import OutputSize


@pytest.mark.parametrize(
    ("scale", "expected"),
    [(1, (150, 101)), (2, (300, 202)), (3.5, (525, 354)), (4, (600, 404)), (8, (1200, 808))],
)
def test_scale(scale: float, expected: tuple[int, int]) -> None:
    assert OutputSize(scale=scale).resolve(150, 101) == expected


def test_default_is_x4() -> None:
    assert OutputSize().resolve(10, 7) == (40, 28)


def test_width_only_keeps_aspect() -> None:
    assert OutputSize(width=300).resolve(150, 101) == (300, 202)
    assert OutputSize(width=301).resolve(150, 101) == (301, 203)  # 202.67 rounds to 203


def test_height_only_keeps_aspect() -> None:
    assert OutputSize(height=404).resolve(150, 101) == (600, 404)
    assert OutputSize(height=1).resolve(150, 101) == (1, 1)


def test_both_sides_are_exact() -> None:
    assert OutputSize(width=64, height=48).resolve(150, 101) == (64, 48)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"scale": 0.5}, "between 1 and 8"),
        ({"scale": 9}, "between 1 and 8"),
        ({"width": 0}, "width must be a positive"),
        ({"height": -3}, "height must be a positive"),
        ({"scale": 2, "width": 10}, "not both"),
    ],
)
def test_bad_requests(kwargs: dict, message: str) -> None:
    with pytest.raises(InvalidParameterError, match=message):
        OutputSize(**kwargs)


def test_output_pixel_limit() -> None:
    with pytest.raises(ImageTooLargeError, match="over the limit"):
        OutputSize(scale=8).resolve(1000, 1000, max_pixels=10_000_000)
