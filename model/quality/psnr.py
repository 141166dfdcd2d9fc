"""Peak signal-to-noise ratio, the SR papers' way: Y channel, border cropped, 8-bit peak."""

from __future__ import annotations

import math

import numpy as np

from megasr.errors import InvalidParameterError
from megasr.model.quality.pixels import crop_border, luma_y, to_float255

PEAK = 255.0


def psnr(
    image: np.ndarray, reference: np.ndarray, *, crop: int = 0, y_channel: bool = True
) -> float:
    """PSNR in dB of ``image`` against ``reference``; ``inf`` for identical images.

    Papers crop as many pixels as the scale factor (``crop=4`` for x4) and compare the Y
    channel of BT.601 (16..235), as BasicSR's ``calculate_psnr(test_y_channel=True)``.
    """
    first, second = comparable_pair(image, reference, crop=crop, y_channel=y_channel)
    mse = float(np.mean((first - second) ** 2))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(PEAK**2 / mse)


def comparable_pair(
    image: np.ndarray, reference: np.ndarray, *, crop: int, y_channel: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Both images on the 0..255 scale, as Y or RGB, with the border cropped."""
    if image.shape != reference.shape:
        raise InvalidParameterError(
            f"images to compare differ in shape: {image.shape} and {reference.shape}"
        )
    convert = luma_y if y_channel else to_float255
    return crop_border(convert(image), crop), crop_border(convert(reference), crop)
