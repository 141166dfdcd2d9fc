"""High-quality resizing of float images, for the last step from the model's x4 to the asked size.

Each channel goes through Pillow's Lanczos filter in 32-bit float mode "F", so nothing is
quantised to 8 bits on the way. Lanczos rings slightly past the input range at hard edges; the
result is clipped back to [0, 1].

An image can also be resized a band of rows at a time (:func:`resize_rows`), so a caller that
produces a large image row by row (the tile accumulator) never holds it whole: Pillow resamples
each band with the same filter taps as a resize of the whole image, given the input rows those
taps read (:func:`lanczos_rows`).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

# Pillow's Lanczos filter reaches this far, in input pixels (times the shrink factor).
LANCZOS_SUPPORT = 3.0


def resize(array: np.ndarray, width: int, height: int) -> np.ndarray:
    """``array`` (H, W) or (H, W, C), float in [0, 1], resized to ``height`` x ``width``.

    The result is float32 with the input's layout; an array already at that size is returned
    as it is (as float32), not filtered.
    """
    if width < 1 or height < 1:
        raise ValueError(f"cannot resize to {width}x{height}")
    if array.ndim not in (2, 3):
        raise ValueError(f"expected an (H, W) or (H, W, C) array, got shape {array.shape}")
    if array.shape[:2] == (height, width):
        return array.astype(np.float32, copy=False)
    if array.ndim == 2:
        return _resize_plane(array, width, height)
    planes = [_resize_plane(array[..., c], width, height) for c in range(array.shape[2])]
    return np.stack(planes, axis=2)


def lanczos_rows(in_size: int, out_size: int, first: int, stop: int) -> tuple[int, int]:
    """The input rows ``[lo, hi)`` that output rows ``first`` to ``stop - 1`` of a Lanczos
    resize from ``in_size`` to ``out_size`` rows read, as Pillow computes its filter taps."""
    scale = in_size / out_size
    support = LANCZOS_SUPPORT * max(scale, 1.0)
    lo = max(int((first + 0.5) * scale - support + 0.5), 0)
    hi = min(int((stop - 0.5) * scale + support + 0.5), in_size)
    return lo, hi


def resize_rows(
    band: np.ndarray, top: int, in_height: int, width: int, height: int, first: int, stop: int
) -> np.ndarray:
    """Output rows ``first`` to ``stop - 1`` of resizing an (``in_height``, W) plane to
    ``height`` x ``width``, computed from ``band``: its input rows from ``top`` on, which must
    hold every row :func:`lanczos_rows` names for them. Equal to the same rows of
    :func:`resize` of the whole plane (to float32 rounding of Pillow's box coordinates)."""
    scale = in_height / height
    box = (0.0, first * scale - top, float(band.shape[1]), stop * scale - top)
    image = Image.fromarray(np.ascontiguousarray(band, dtype=np.float32))  # mode "F"
    resized = image.resize((width, stop - first), Image.Resampling.LANCZOS, box=box)
    return np.clip(np.asarray(resized), 0.0, 1.0)


def _resize_plane(plane: np.ndarray, width: int, height: int) -> np.ndarray:
    image = Image.fromarray(np.ascontiguousarray(plane, dtype=np.float32))  # mode "F"
    resized = image.resize((width, height), Image.Resampling.LANCZOS)
    return np.clip(np.asarray(resized), 0.0, 1.0)
