"""The in-memory image every part of the project passes around."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# File name endings of the formats the decoder reads: how a folder's images are found.
IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp", ".gif", ".heic", ".heif", ".avif"}
)


@dataclass(frozen=True)
class ImageLimits:
    """Limits checked before a full decode, so a hostile file costs nothing to refuse."""

    max_bytes: int = 50 * 1024 * 1024
    max_pixels: int = 40_000_000


@dataclass
class DecodedImage:
    """An sRGB image as float32 in [0, 1], with its alpha split off.

    ``rgb`` is (H, W, 3); grayscale inputs are expanded to three equal channels so every
    engine sees one layout. ``alpha`` is (H, W) or None. ``bit_depth`` is 8 or 16 and tells
    the encoder whether a 16-bit PNG is worth writing. ``notes`` records what the decoder
    changed on the way (orientation applied, ICC converted, first frame taken), so a user
    can be told.
    """

    rgb: np.ndarray
    alpha: np.ndarray | None
    source_format: str
    bit_depth: int = 8
    grayscale: bool = False
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])
