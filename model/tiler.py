"""Split any image into overlapping fixed-shape tiles and blend the results back.

Fixed shapes let one engine call take tiles of many images (the worker batches across
jobs). Images smaller than a tile, or not a multiple of the engine's size multiple, are
padded by reflection. Tiles are placed on a regular stride with the last one flush with the
far edge, so no tile reaches past the padded image. On reassembly every tile is weighted by
a separable window that is 1 inside, ramps linearly across the overlap with its neighbours
and is 0 on a thin margin at inner edges, where a convolution saw padding instead of the
neighbouring pixels; the weights of neighbouring tiles sum to 1 across a regular overlap,
so a flat or smooth image comes back with no seam.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class TileLayout:
    """Where the tiles of one image lie, in input pixels of the padded image."""

    height: int
    width: int
    tile: int
    overlap: int
    padded_height: int
    padded_width: int
    ys: tuple[int, ...]
    xs: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.ys) * len(self.xs)

    def positions(self) -> Iterator[tuple[int, int]]:
        """(y, x) of every tile's top-left corner, row by row."""
        for y in self.ys:
            for x in self.xs:
                yield y, x


def plan_tiles(height: int, width: int, tile: int, overlap: int, multiple: int = 1) -> TileLayout:
    """The layout of ``tile``-sided tiles over an image of ``height`` x ``width``."""
    if height < 1 or width < 1:
        raise ValueError(f"cannot tile an empty image of {width}x{height}")
    padded_h = max(tile, _round_up(height, multiple))
    padded_w = max(tile, _round_up(width, multiple))
    return TileLayout(
        height=height,
        width=width,
        tile=tile,
        overlap=overlap,
        padded_height=padded_h,
        padded_width=padded_w,
        ys=_starts(padded_h, tile, overlap),
        xs=_starts(padded_w, tile, overlap),
    )


def fitted_tile(height: int, width: int, tile: int, multiple: int = 1) -> int:
    """A tile no larger than the image needs, for callers that batch one image alone."""
    return min(tile, _round_up(max(height, width), multiple))


def extract_tiles(image: torch.Tensor, layout: TileLayout) -> torch.Tensor:
    """(C, H, W) image -> (N, C, tile, tile) tiles in :meth:`TileLayout.positions` order."""
    padded = reflect_pad(image, layout.padded_height, layout.padded_width)
    t = layout.tile
    return torch.stack([padded[:, y : y + t, x : x + t] for y, x in layout.positions()])


def reflect_pad(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Pad (C, H, W) at the bottom and right to ``height`` x ``width`` by reflection.

    Reflection needs a source wider than the pad, so large pads are done in rounds (the
    mirror of a mirror); a one-pixel side is replicated, the only thing it can be.
    """
    while image.shape[-2] < height or image.shape[-1] < width:
        h, w = image.shape[-2:]
        pad_h, pad_w = min(height - h, h - 1), min(width - w, w - 1)
        if (height > h and pad_h == 0) or (width > w and pad_w == 0):
            image = F.pad(
                image[None], (0, max(0, width - w), 0, max(0, height - h)), mode="replicate"
            )[0]
            continue
        image = F.pad(image[None], (0, pad_w, 0, pad_h), mode="reflect")[0]
    return image


class TileAccumulator:
    """Collects upscaled tiles of one image and blends them into the output."""

    def __init__(self, layout: TileLayout, scale: int, channels: int = 3) -> None:
        self.layout = layout
        self.scale = scale
        out_h, out_w = layout.padded_height * scale, layout.padded_width * scale
        self._sum = torch.zeros(channels, out_h, out_w)
        self._weight = torch.zeros(1, out_h, out_w)
        self._positions = list(layout.positions())
        self._received = 0

    @property
    def complete(self) -> bool:
        return self._received == len(self._positions)

    def add(self, first: int, outputs: torch.Tensor) -> None:
        """Blend ``outputs`` (n, C, tile*scale, tile*scale), tiles ``first`` to ``first + n``."""
        s, t = self.scale, self.layout.tile * self.scale
        for offset, tile in enumerate(outputs.float().cpu()):
            y, x = self._positions[first + offset]
            weight = self._window(y, x)
            self._sum[:, y * s : y * s + t, x * s : x * s + t] += tile * weight
            self._weight[:, y * s : y * s + t, x * s : x * s + t] += weight
        self._received += len(outputs)

    def result(self) -> torch.Tensor:
        """(C, H*scale, W*scale): the blended image, cropped to the unpadded size."""
        if not self.complete:
            raise RuntimeError(f"{self._received} of {len(self._positions)} tiles received")
        h, w = self.layout.height * self.scale, self.layout.width * self.scale
        return (self._sum[:, :h, :w] / self._weight[:, :h, :w]).clamp_(0.0, 1.0)

    def _window(self, y: int, x: int) -> torch.Tensor:
        lay, s = self.layout, self.scale
        wy = _ramp_window(lay.tile, lay.overlap, y > 0, y + lay.tile < lay.padded_height, s)
        wx = _ramp_window(lay.tile, lay.overlap, x > 0, x + lay.tile < lay.padded_width, s)
        return wy[:, None] * wx[None, :]


def _starts(length: int, tile: int, overlap: int) -> tuple[int, ...]:
    if length <= tile:
        return (0,)
    stride = tile - overlap
    count = math.ceil((length - tile) / stride) + 1
    return tuple(min(i * stride, length - tile) for i in range(count))


def _ramp_window(tile: int, overlap: int, before: bool, after: bool, scale: int) -> torch.Tensor:
    """1-D weights over a tile in output pixels: a margin of 0, a linear ramp, then 1."""
    n, o = tile * scale, overlap * scale
    weight = torch.ones(n)
    if o == 0:
        return weight
    margin = o // 4
    ramp_len = o - 2 * margin
    ramp = (torch.arange(ramp_len, dtype=torch.float32) + 0.5) / ramp_len
    rising = torch.cat([torch.zeros(margin), ramp, torch.ones(margin)])
    if before:
        weight[:o] = torch.minimum(weight[:o], rising)
    if after:
        weight[n - o :] = torch.minimum(weight[n - o :], rising.flip(0))
    return weight


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple
