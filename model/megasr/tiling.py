"""Overlapping tiles over a latent with Gaussian blending weights.

Denoising, VAE encoding and VAE decoding of a large image all run on fixed-shape tiles laid
over the latent grid and blend the tile results with weights that peak at each tile's centre
and fall off smoothly, so neighbouring tiles fade into each other with no visible seam.
Tiles are square except that a side shorter than the tile gives a tile of that side; they
start where the project's one start rule puts them (:func:`megasr.model.tiler.tile_starts`:
a regular stride, the last tile flush with the far edge).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from megasr.model.megasr.batches import HalvingBatches
from megasr.model.tiler import tile_starts


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
            height,
            width,
            th,
            tw,
            tile_starts(height, th, stride),
            tile_starts(width, tw, stride),
            sigma,
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


class TileBlender:
    """Blends per-tile outputs of one tiling into one map; weights made once, on ``device``.

    The sampler blends every image's noise predictions at every step, so the Gaussian tile
    weights and their per-pixel sum live on the engine's device for the whole image.
    """

    def __init__(self, tiling: LatentTiling, device: torch.device | str, scale: int = 1) -> None:
        self.tiling = tiling
        self.scale = scale
        self.weight = tiling.weights(scale).to(device)
        self.total_weight = torch.zeros(
            1, tiling.height * scale, tiling.width * scale, device=device
        )
        for ys, xs in self.windows:
            self.total_weight[:, ys, xs] += self.weight

    @property
    def windows(self) -> list[tuple[slice, slice]]:
        """Where each tile's output lies in the blended map, in ``positions`` order."""
        th, tw, s = self.tiling.tile_height, self.tiling.tile_width, self.scale
        return [
            (slice(y * s, y * s + th * s), slice(x * s, x * s + tw * s))
            for y, x in self.tiling.positions
        ]

    def blend(self, outputs: list[torch.Tensor]) -> torch.Tensor:
        """(C, H*scale, W*scale) float32 from tile outputs (C, th*scale, tw*scale)."""
        channels = outputs[0].shape[0]
        total = self.total_weight.new_zeros(channels, *self.total_weight.shape[1:])
        for (ys, xs), out in zip(self.windows, outputs, strict=True):
            total[:, ys, xs] += out.float() * self.weight
        return total / self.total_weight


def map_tiled(
    fn: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    tiling: LatentTiling,
    in_scale: int,
    out_scale: int,
    batches: HalvingBatches,
) -> torch.Tensor:
    """Run ``fn`` over batches of tiles of ``image`` (C, H, W) and blend the results.

    ``image`` is ``in_scale`` x the latent grid of ``tiling`` and ``fn``'s outputs are
    ``out_scale`` x it (VAE encode: 8 -> 1, decode: 1 -> 8).
    """
    th, tw = tiling.tile_height * in_scale, tiling.tile_width * in_scale
    crops = [
        image[:, y * in_scale : y * in_scale + th, x * in_scale : x * in_scale + tw]
        for y, x in tiling.positions
    ]
    outputs = batches.map(lambda batch: list(fn(torch.stack(batch))), crops)
    return TileBlender(tiling, image.device, out_scale).blend(outputs)


def _gaussian(n: int, sigma: float) -> torch.Tensor:
    """Weights over ``n`` samples centred on the middle, ``sigma`` a fraction of ``n``."""
    centre = (n - 1) / 2
    x = (torch.arange(n, dtype=torch.float32) - centre) / n
    return torch.exp(-0.5 * (x / sigma) ** 2)
