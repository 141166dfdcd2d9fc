"""MATLAB's ``imresize(image, 0.5)``: bicubic with its antialiasing, for NIQE's second scale.

When shrinking, MATLAB stretches the cubic kernel (a = -0.5) by the inverse scale, so halving
takes eight taps per output pixel instead of four, and mirrors the image at its edges
(``symmetric`` padding, edge pixel repeated). Output pixel j sits at input coordinate
2j + 0.5 and draws on inputs 2j - 3 ... 2j + 4. Anything else (scipy's zoom, Pillow's
reduce) lands on other values, and NIQE's second-scale features with them.
"""

from __future__ import annotations

import numpy as np

_DISTANCES = np.arange(3.5, -4.0, -1.0)  # from input pixel 2j - 3 to 2j + 4
_PAD = 3


def _cubic(x: np.ndarray) -> np.ndarray:
    ax = np.abs(x)
    near = (1.5 * ax**3 - 2.5 * ax**2 + 1) * (ax <= 1)
    far = (-0.5 * ax**3 + 2.5 * ax**2 - 4 * ax + 2) * ((ax > 1) & (ax <= 2))
    return near + far


_WEIGHTS = _cubic(_DISTANCES / 2)
_WEIGHTS /= _WEIGHTS.sum()


def halve(image: np.ndarray) -> np.ndarray:
    """A 2-D image with even sides, halved along both axes."""
    return _halve_axis(_halve_axis(image, 0), 1)


def _halve_axis(image: np.ndarray, axis: int) -> np.ndarray:
    moved = np.moveaxis(image, axis, 0)
    size = moved.shape[0] // 2
    padded = np.pad(moved, ((_PAD, _PAD), (0, 0)), mode="symmetric")
    out = sum(weight * padded[tap : tap + 2 * size : 2] for tap, weight in enumerate(_WEIGHTS))
    return np.moveaxis(out, 0, axis)
