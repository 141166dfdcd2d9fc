"""High-quality resizing of float images, for the last step from the model's x4 to the asked size.

Each channel goes through Pillow's Lanczos filter in 32-bit float mode "F", so nothing is
quantised to 8 bits on the way. Lanczos rings slightly past the input range at hard edges; the
result is clipped back to [0, 1].
"""

from __future__ import annotations

import numpy as np
from PIL import Image


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


def _resize_plane(plane: np.ndarray, width: int, height: int) -> np.ndarray:
    image = Image.fromarray(np.ascontiguousarray(plane, dtype=np.float32))  # mode "F"
    resized = image.resize((width, height), Image.Resampling.LANCZOS)
    return np.clip(np.asarray(resized), 0.0, 1.0)
