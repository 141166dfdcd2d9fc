"""The engine interface: load, warm up, say the tile shape, run a batch of tiles.

An engine is only the network and its numerics. Splitting images into tiles, blending them
back and resizing to the requested size live in :mod:`megasr.model.tiler` and
:mod:`megasr.model.upscaler`, so every engine gets them for free and the worker can batch
tiles of different images through the same call.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch


@dataclass(frozen=True)
class TileSpec:
    """The fixed tile shape an engine wants.

    ``size`` is the side of a square input tile in pixels, ``overlap`` the pixels shared by
    neighbouring tiles (blended on reassembly), ``multiple`` what image sides are padded to.
    """

    size: int
    overlap: int
    multiple: int = 1

    def __post_init__(self) -> None:
        if self.size < 1 or self.overlap < 0 or self.multiple < 1:
            raise ValueError(f"invalid tile spec {self}")
        if self.overlap >= self.size:
            raise ValueError(
                f"tile overlap {self.overlap} must be smaller than the tile {self.size}"
            )
        if self.size % self.multiple:
            raise ValueError(f"tile size {self.size} is not a multiple of {self.multiple}")


class Engine(ABC):
    """A super-resolution network, resident on one device."""

    name: ClassVar[str]
    native_scale: ClassVar[int]

    @abstractmethod
    def load(self, device: torch.device, dtype: torch.dtype | None = None) -> None:
        """Put the weights on ``device``; ``dtype`` None picks the engine's fast path."""

    @property
    @abstractmethod
    def tile_spec(self) -> TileSpec:
        """The tile shape :meth:`run` is built for."""

    @abstractmethod
    def run(self, tiles: torch.Tensor) -> torch.Tensor:
        """Upscale a batch of tiles.

        ``tiles`` is (N, 3, h, w) float32 in [0, 1] on any device; the result is
        (N, 3, h * native_scale, w * native_scale) float32 in [0, 1] on the CPU.
        """

    def warmup(self) -> None:
        """Run one tile so the first real request pays no one-off costs."""
        size = self.tile_spec.size
        self.run(torch.zeros(1, 3, size, size))
