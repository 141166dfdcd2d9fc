"""Overlapping tiles over a latent with Gaussian blending weights.

Denoising, VAE encoding and VAE decoding of a large image all run on fixed-shape tiles laid
over the latent grid and blend the tile results with weights that peak at each tile's centre
and fall off smoothly, so neighbouring tiles fade into each other with no visible seam.
Tiles are square except that a side shorter than the tile gives a tile of that side; their
starts are a regular stride with the last tile flush with the far edge.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LatentTiling:
    """Tile positions over a latent of ``height`` x ``width``, in latent units."""

    height: int
    width: int
    tile_height: int
    tile_width: int
    ys: tuple[int, ...]
    xs: tuple[int, ...]
    sigma: float

    @classmethod
    def plan(
        cls, height: int, width: int, tile: int, overlap: int, sigma: float, multiple: int = 1
    ) -> LatentTiling:
        """Tiles of side ``tile`` (rounded down to ``multiple``) sharing ``overlap`` latents."""
        tile = max(multiple, tile // multiple * multiple)
        th, tw = min(tile, height), min(tile, width)
        stride = max(multiple, (tile - overlap) // multiple * multiple)
        return cls(
            height, width, th, tw, _starts(height, th, stride), _starts(width, tw, stride), sigma
        )

    def __len__(self) -> int:
        return len(self.ys) * len(self.xs)

    @property
    def positions(self) -> list[tuple[int, int]]:
        return [(y, x) for y in self.ys for x in self.xs]

    def weights(self, scale: int = 1) -> torch.Tensor:
        """(th*scale, tw*scale) Gaussian weights of one tile, for outputs ``scale`` x larger."""
        wy = _gaussian(self.tile_height * scale, self.sigma)
        wx = _gaussian(self.tile_width * scale, self.sigma)
        return wy[:, None] * wx[None, :]


def blend_tiles(
    tiling: LatentTiling,
    outputs: list[torch.Tensor],
    scale: int = 1,
) -> torch.Tensor:
    """Blend per-tile outputs (C, th*scale, tw*scale), in ``positions`` order, into one map."""
    channels = outputs[0].shape[0]
    ref = outputs[0]
    total = ref.new_zeros(
        channels, tiling.height * scale, tiling.width * scale, dtype=torch.float32
    )
    norm = torch.zeros_like(total[:1])
    weight = tiling.weights(scale).to(ref.device)
    th, tw = tiling.tile_height * scale, tiling.tile_width * scale
    for (y, x), out in zip(tiling.positions, outputs, strict=True):
        ys, xs = slice(y * scale, y * scale + th), slice(x * scale, x * scale + tw)
        total[:, ys, xs] += out.float() * weight
        norm[:, ys, xs] += weight
    return total / norm


def map_tiled(
    fn: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    tiling: LatentTiling,
    in_scale: int,
    out_scale: int,
    batch_size: int,
) -> torch.Tensor:
    """Run ``fn`` over tiles of ``image`` (C, H, W) and blend the results.

    ``image`` is ``in_scale`` x the latent grid of ``tiling`` and ``fn``'s outputs are
    ``out_scale`` x it (VAE encode: 8 -> 1, decode: 1 -> 8).
    """
    th, tw = tiling.tile_height * in_scale, tiling.tile_width * in_scale
    crops = [
        image[:, y * in_scale : y * in_scale + th, x * in_scale : x * in_scale + tw]
        for y, x in tiling.positions
    ]
    outputs: list[torch.Tensor] = []
    for first in range(0, len(crops), batch_size):
        outputs.extend(fn(torch.stack(crops[first : first + batch_size])))
    return blend_tiles(tiling, outputs, out_scale)


def _starts(length: int, tile: int, stride: int) -> tuple[int, ...]:
    if length <= tile:
        return (0,)
    count = math.ceil((length - tile) / stride) + 1
    return tuple(min(i * stride, length - tile) for i in range(count))


def _gaussian(n: int, sigma: float) -> torch.Tensor:
    """Weights over ``n`` samples centred on the middle, ``sigma`` a fraction of ``n``."""
    centre = (n - 1) / 2
    x = (torch.arange(n, dtype=torch.float32) - centre) / n
    return torch.exp(-0.5 * (x / sigma) ** 2)
