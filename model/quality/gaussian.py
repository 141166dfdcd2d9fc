"""Normalised Gaussian windows and separable filtering, as MATLAB's fspecial/imfilter.

A sampled 2-D Gaussian is the outer product of two 1-D ones, so filtering along each axis in
turn gives MATLAB's 2-D result at a fraction of the cost.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def gaussian_kernel(size: int, sigma: float) -> np.ndarray:
    """A ``size``-tap 1-D Gaussian summing to one, centred on the middle tap."""
    offsets = np.arange(size, dtype=np.float64) - (size - 1) / 2
    kernel = np.exp(-(offsets**2) / (2 * sigma**2))
    return kernel / kernel.sum()


def gaussian_filter(image: np.ndarray, size: int, sigma: float, *, valid: bool) -> np.ndarray:
    """Filter a 2-D image with a ``size`` x ``size`` Gaussian window.

    ``valid=False`` pads by replicating the edge (``imfilter(..., 'replicate')``) and keeps the
    size; ``valid=True`` keeps only the pixels whose window lies inside the image.
    """
    kernel = gaussian_kernel(size, sigma)
    out = ndimage.correlate1d(image, kernel, axis=0, mode="nearest")
    out = ndimage.correlate1d(out, kernel, axis=1, mode="nearest")
    if valid:
        half = size // 2
        out = out[half : out.shape[0] - half, half : out.shape[1] - half]
    return out
