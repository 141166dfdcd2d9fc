"""Mean-subtracted contrast-normalised (MSCN) coefficients, the input of NIQE and PIQE.

Local mean and deviation come from a 7x7 Gaussian window with sigma 7/6 (three deviations
each side) and replicated edges; the constant 1 keeps flat regions from dividing by zero.
"""

from __future__ import annotations

import numpy as np

from megasr.model.quality.gaussian import gaussian_filter

WINDOW_SIZE = 7
WINDOW_SIGMA = 7 / 6


def mscn(gray: np.ndarray) -> np.ndarray:
    """The MSCN coefficients of a 0..255 gray image."""
    mu = gaussian_filter(gray, WINDOW_SIZE, WINDOW_SIGMA, valid=False)
    second = gaussian_filter(gray * gray, WINDOW_SIZE, WINDOW_SIGMA, valid=False)
    sigma = np.sqrt(np.abs(second - mu * mu))
    return (gray - mu) / (sigma + 1.0)
