"""Natural-scene-statistics features of MSCN coefficients, as NIQE's MATLAB release computes them.

MSCN coefficients of a pristine photograph, and the products of neighbouring coefficients,
follow asymmetric generalised Gaussians (AGGD); distortions bend their shapes. The shape is
fitted by moment matching against a table of shape values 0.2, 0.201, ... 10, the grid of the
MATLAB reference, so the features land on the values its pristine model was fitted to.
"""

from __future__ import annotations

import numpy as np
from scipy.special import gamma

SHAPES = np.linspace(0.2, 10.0, 9801)
_SHAPE_RATIOS = gamma(2 / SHAPES) ** 2 / (gamma(1 / SHAPES) * gamma(3 / SHAPES))

# Neighbour offsets (rows, columns): horizontal, vertical, main and anti diagonal.
NEIGHBOURS = ((0, 1), (1, 0), (1, 1), (1, -1))


def fit_aggd(values: np.ndarray) -> tuple[float, float, float]:
    """Shape and left/right scales of an asymmetric generalised Gaussian fitted to ``values``."""
    left_std = _rms(values[values < 0])
    right_std = _rms(values[values > 0])
    skew = left_std / right_std
    ratio = np.mean(np.abs(values)) ** 2 / np.mean(values**2)
    normalised = ratio * (skew**3 + 1) * (skew + 1) / (skew**2 + 1) ** 2
    shape = float(SHAPES[np.argmin((_SHAPE_RATIOS - normalised) ** 2)])
    scale = np.sqrt(gamma(1 / shape) / gamma(3 / shape))
    return shape, float(left_std * scale), float(right_std * scale)


def _rms(values: np.ndarray) -> float:
    """Root mean square; NaN for no values, as MATLAB's mean of an empty array."""
    return float(np.sqrt(np.mean(values**2))) if values.size else np.nan


def block_features(block: np.ndarray) -> np.ndarray:
    """The 18 features of one block of MSCN coefficients.

    Shape and mean scale of the coefficients; then for each neighbour direction the shape,
    mean, and left and right scales of the products with the (circularly) shifted block. A
    flat block has no defined scale: those features come out NaN, and the caller skips them
    as MATLAB's ``nanmean``/``nancov`` do.
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        shape, left, right = fit_aggd(block.ravel())
        features = [shape, (left + right) / 2]
        for offset in NEIGHBOURS:
            products = (block * np.roll(block, offset, axis=(0, 1))).ravel()
            shape, left, right = fit_aggd(products)
            mean = (right - left) * gamma(2 / shape) / gamma(1 / shape)
            features += [shape, mean, left, right]
    return np.asarray(features)
