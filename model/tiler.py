"""Split any image into overlapping fixed-shape tiles and blend the results back.

Fixed shapes let one engine call take tiles of many images (the worker batches across
jobs). :func:`tile_starts` places tiles for every tiler of the project, MegaSR's latent tiles
included. Images smaller than a tile, or not a multiple of the engine's size multiple, are
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

from megasr.imaging.resize import lanczos_rows, resize_rows


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
        ys=tile_starts(padded_h, tile, tile - overlap),
        xs=tile_starts(padded_w, tile, tile - overlap),
    )


def fitted_tile(height: int, width: int, tile: int, multiple: int = 1, whole_up_to: int = 0) -> int:
    """The tile for an image run on its own terms: no larger than the image needs, and the
    whole image as one tile when its longer side is at most ``whole_up_to``."""
    side = _round_up(max(height, width), multiple)
    return side if side <= max(tile, whole_up_to) else tile


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
    """Collects the upscaled tiles of one image and blends them into the output at its size.

    ``scale`` is the engine's native factor; ``size`` (height, width) the output asked for,
    by default the native size. Tiles must arrive in :meth:`TileLayout.positions` order. Only
    a band of rows is kept at native scale: once a row of tiles is complete, the native rows
    above the next row of tiles cannot change any more, so they are blended, resized to the
    output with the same Lanczos filter a resize of the whole image would use
    (:func:`~megasr.imaging.resize.resize_rows`) and dropped. Memory is the output plus about
    one row of tiles at native scale, whatever the scale asked for; a 40 MP input at scale 1
    no longer holds a 640 MP native image (docs/benchmarks.md).
    """

    def __init__(
        self,
        layout: TileLayout,
        scale: int,
        size: tuple[int, int] | None = None,
        channels: int = 3,
    ) -> None:
        self.layout = layout
        self.scale = scale
        self.native = (layout.height * scale, layout.width * scale)
        self.size = size or self.native
        self._out = torch.zeros(channels, *self.size)
        self._rows_done = 0  # output rows written
        self._top = 0  # the native row the band starts at
        self._sum = torch.zeros(channels, 0, self.native[1])
        self._weight = torch.zeros(1, 0, self.native[1])
        self._positions = list(layout.positions())
        self._received = 0
        self._windows: dict[tuple[bool, ...], torch.Tensor] = {}

    @property
    def complete(self) -> bool:
        return self._received == len(self._positions)

    @property
    def native_rows_held(self) -> int:
        """Rows held at native scale now: about one row of tiles, never the whole image."""
        return self._sum.shape[1]

    def add(self, first: int, outputs: torch.Tensor) -> None:
        """Blend ``outputs`` (n, C, tile*scale, tile*scale), tiles ``first`` to ``first + n``."""
        if first != self._received:
            raise ValueError(f"tile {first} arrived, tile {self._received} was expected")
        columns = len(self.layout.xs)
        for tile in outputs.float().cpu():
            row, column = divmod(self._received, columns)
            self._blend(tile, *self._positions[self._received])
            self._received += 1
            if column == columns - 1:
                last = row + 1 == len(self.layout.ys)
                self._emit(self.native[0] if last else self.layout.ys[row + 1] * self.scale)

    def result(self) -> torch.Tensor:
        """(C, height, width): the blended image at the output size."""
        if not self.complete:
            raise RuntimeError(f"{self._received} of {len(self._positions)} tiles received")
        return self._out.clamp_(0.0, 1.0)

    def _blend(self, tile: torch.Tensor, y: int, x: int) -> None:
        """Add one tile, weighted by its window, to the band (cropped to the native size)."""
        s, t = self.scale, self.layout.tile * self.scale
        height, width = self.native
        y0, x0 = y * s, x * s
        y1, x1 = min(y0 + t, height), min(x0 + t, width)
        self._grow(y1)
        weight = self._window(y, x)[: y1 - y0, : x1 - x0]
        rows = slice(y0 - self._top, y1 - self._top)
        self._sum[:, rows, x0:x1] += tile[:, : y1 - y0, : x1 - x0] * weight
        self._weight[:, rows, x0:x1] += weight

    def _grow(self, end: int) -> None:
        """Extend the band down to native row ``end``."""
        missing = end - self._top - self._sum.shape[1]
        if missing > 0:
            channels, width = self._sum.shape[0], self.native[1]
            self._sum = torch.cat([self._sum, torch.zeros(channels, missing, width)], dim=1)
            self._weight = torch.cat([self._weight, torch.zeros(1, missing, width)], dim=1)

    def _emit(self, final: int) -> None:
        """Write every output row whose input rows all lie above native row ``final``."""
        out_height = self.size[0]
        stop = self._rows_done
        while stop < out_height and self._reads(stop, stop + 1)[1] <= final:
            stop += 1
        if stop > self._rows_done:
            self._write(self._rows_done, stop)
            self._rows_done = stop
        keep = final if stop == out_height else min(final, self._reads(stop, stop + 1)[0])
        self._drop(keep)

    def _reads(self, first: int, stop: int) -> tuple[int, int]:
        """The native rows that output rows ``first`` to ``stop - 1`` are made of."""
        height, out_height = self.native[0], self.size[0]
        if height == out_height:
            return first, stop
        return lanczos_rows(height, out_height, first, stop)

    def _write(self, first: int, stop: int) -> None:
        """Output rows ``first`` to ``stop - 1`` from the band."""
        height, (out_height, out_width) = self.native[0], self.size
        lo, hi = self._reads(first, stop)
        band = slice(lo - self._top, hi - self._top)
        native = self._sum[:, band] / self._weight[:, band]
        if self.native == self.size:
            self._out[:, first:stop] = native
            return
        for channel, plane in enumerate(native.numpy()):
            rows = resize_rows(plane, lo, height, out_width, out_height, first, stop)
            self._out[channel, first:stop] = torch.from_numpy(rows)

    def _drop(self, keep: int) -> None:
        """Forget the band's rows above native row ``keep`` (their memory goes when the band
        next grows: :meth:`_grow` copies the rows kept into a new tensor)."""
        if keep > self._top:
            self._sum = self._sum[:, keep - self._top :]
            self._weight = self._weight[:, keep - self._top :]
            self._top = keep

    def _window(self, y: int, x: int) -> torch.Tensor:
        """The blending weights of the tile at (y, x): one of at most 16, by its neighbours."""
        lay = self.layout
        sides = (y > 0, y + lay.tile < lay.padded_height, x > 0, x + lay.tile < lay.padded_width)
        if sides not in self._windows:
            wy = _ramp_window(lay.tile, lay.overlap, *sides[:2], self.scale)
            wx = _ramp_window(lay.tile, lay.overlap, *sides[2:], self.scale)
            self._windows[sides] = wy[:, None] * wx[None, :]
        return self._windows[sides]


def tile_starts(length: int, tile: int, stride: int) -> tuple[int, ...]:
    """Where tiles of side ``tile`` start along ``length``: every ``stride``, the last one
    flush with the far edge, so none reaches past it (one tile when ``length`` fits in one).

    The one start rule of every tiler here: pixel tiles of the GAN engines (:func:`plan_tiles`)
    and MegaSR's latent tiles (:class:`~megasr.model.megasr.tiling.LatentTiling`).
    """
    if length <= tile:
        return (0,)
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
