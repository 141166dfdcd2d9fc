"""Pixel conventions shared by the metrics: 0..255 floats, MATLAB's luma, border crops.

The reference implementations (MATLAB, BasicSR) work on 8-bit images, so every metric first
brings its input to float64 on the 0..255 scale whatever the caller holds: ``uint8``,
``uint16``, or floats in [0, 1] as the project's :class:`~megasr.imaging.image.DecodedImage`.
"""

from __future__ import annotations

import numpy as np

from megasr.errors import InvalidImageError, InvalidParameterError

# ITU-R BT.601 for 8-bit video range, as MATLAB's rgb2ycbcr: Y in 16..235.
_Y_WEIGHTS = np.array([65.481, 128.553, 24.966]) / 255.0
_Y_OFFSET = 16.0
# MATLAB's rgb2gray: the luminance row of the inverted NTSC matrix, not the rounded 0.299.
_GRAY_WEIGHTS = np.array([0.298936021293775, 0.587043074451121, 0.114020904255103])


def to_float255(image: np.ndarray) -> np.ndarray:
    """``image`` (H, W) or (H, W, 3) as float64 on the 0..255 scale."""
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
        raise InvalidImageError(f"expected an (H, W) or (H, W, 3) image, got shape {image.shape}")
    if image.dtype == np.uint8:
        return image.astype(np.float64)
    if image.dtype == np.uint16:
        return image.astype(np.float64) / 257.0
    if np.issubdtype(image.dtype, np.floating):
        return image.astype(np.float64) * 255.0
    raise InvalidImageError(f"expected uint8, uint16 or float pixels, got {image.dtype}")


def luma_y(image: np.ndarray) -> np.ndarray:
    """The Y channel (16..235) of an RGB image on the 0..255 scale; gray images pass as is."""
    pixels = to_float255(image)
    if pixels.ndim == 2:
        return pixels
    return pixels @ _Y_WEIGHTS + _Y_OFFSET


def matlab_gray(image: np.ndarray) -> np.ndarray:
    """MATLAB's ``rgb2gray`` on the 0..255 scale, rounded as MATLAB rounds an 8-bit result."""
    pixels = to_float255(image)
    if pixels.ndim == 3:
        pixels = pixels @ _GRAY_WEIGHTS
    return np.round(pixels)


def crop_border(image: np.ndarray, border: int) -> np.ndarray:
    """``image`` without ``border`` pixels on each side (SR papers crop the scale factor)."""
    if border < 0:
        raise InvalidParameterError(f"crop border must be 0 or more pixels, got {border}")
    height, width = image.shape[:2]
    if 2 * border >= min(height, width):
        raise InvalidParameterError(
            f"crop border of {border} px leaves nothing of a {width}x{height} image"
        )
    if border == 0:
        return image
    return image[border:-border, border:-border]


def to_uint8(image: np.ndarray) -> np.ndarray:
    """``image`` as 8-bit pixels, rounded, for tools that score what an 8-bit file holds."""
    return np.clip(np.round(to_float255(image)), 0, 255).astype(np.uint8)
