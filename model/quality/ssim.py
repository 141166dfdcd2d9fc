"""Structural similarity, the SR papers' way (Wang et al. 2004 as BasicSR computes it).

An 11x11 Gaussian window with sigma 1.5 over the 0..255 data, constants K1 = 0.01 and
K2 = 0.03, the map kept only where the window fits inside the image, then averaged. On the Y
channel by default; on RGB the per-channel means are averaged.
"""

from __future__ import annotations

import numpy as np

from megasr.errors import InvalidImageError
from megasr.model.quality.gaussian import gaussian_filter
from megasr.model.quality.psnr import PEAK, comparable_pair

WINDOW_SIZE = 11
WINDOW_SIGMA = 1.5
C1 = (0.01 * PEAK) ** 2
C2 = (0.03 * PEAK) ** 2


def ssim(
    image: np.ndarray, reference: np.ndarray, *, crop: int = 0, y_channel: bool = True
) -> float:
    """Mean SSIM of ``image`` against ``reference``, 1.0 for identical images."""
    first, second = comparable_pair(image, reference, crop=crop, y_channel=y_channel)
    if min(first.shape[:2]) < WINDOW_SIZE:
        raise InvalidImageError(
            f"SSIM needs at least {WINDOW_SIZE}x{WINDOW_SIZE} pixels after the border crop"
        )
    if first.ndim == 2:
        return _ssim_plane(first, second)
    return float(np.mean([_ssim_plane(first[..., c], second[..., c]) for c in range(3)]))


def _ssim_plane(x: np.ndarray, y: np.ndarray) -> float:
    def blur(plane: np.ndarray) -> np.ndarray:
        return gaussian_filter(plane, WINDOW_SIZE, WINDOW_SIGMA, valid=True)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    numerator = (2 * mu_x * mu_y + C1) * (2 * cov + C2)
    denominator = (mu_x**2 + mu_y**2 + C1) * (var_x + var_y + C2)
    return float(np.mean(numerator / denominator))
