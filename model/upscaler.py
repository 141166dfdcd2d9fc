"""One image in, one image of the requested size out, through any engine.

A tile engine upscales by its native factor, tile by tile, and the tiles are blended back
here straight into the requested size (the accumulator resizes band by band, so the whole
image never exists at native scale); an image engine restores the whole image at the
requested size itself. This module owns the rest: alpha is split off and resized on its own
(an SR network would invent texture in a mask).

:func:`cut_tiles` and :func:`finish_image` are the two ends of the tile path; the worker
calls them itself so that tiles of many images can share engine calls in between.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from megasr.imaging.image import DecodedImage
from megasr.imaging.resize import resize
from megasr.imaging.sizing import OutputSize
from megasr.model.engines.base import (
    Engine,
    GenerationOptions,
    ImageEngine,
    ImageTask,
    ProgressCallback,
    TileEngine,
    TileSpec,
)
from megasr.model.tiler import TileAccumulator, TileLayout, extract_tiles, fitted_tile, plan_tiles


def plan_image_tiles(
    height: int, width: int, spec: TileSpec, fit: bool = False, bucket: int = 1
) -> TileLayout:
    """The tile layout of an image of ``height`` x ``width`` for an engine with ``spec``.

    ``fit`` gives an image smaller than one engine tile, or no larger than the spec's
    ``whole_up_to``, one tile of its own size, rounded up to a multiple of ``bucket``: a 64 px
    image then costs a 64 px tile, not a full one, a 250 px image one tile instead of four,
    and images of similar size still share a tile shape and so a batch. The tile depends on
    the image alone, so a result is the same whether its tiles ran alone or batched.
    """
    tile = spec.size
    if fit:
        multiple = math.lcm(spec.multiple, bucket)
        tile = fitted_tile(height, width, spec.size, multiple, spec.whole_up_to)
    return plan_tiles(height, width, tile, spec.overlap, spec.multiple)


def cut_tiles(
    image: DecodedImage, spec: TileSpec, fit: bool = False, bucket: int = 1
) -> tuple[torch.Tensor, TileLayout]:
    """The engine tiles of ``image``'s colour channels, and where they lie."""
    layout = plan_image_tiles(image.height, image.width, spec, fit, bucket)
    pixels = torch.from_numpy(np.ascontiguousarray(image.rgb.transpose(2, 0, 1)))
    return extract_tiles(pixels, layout), layout


def finish_image(
    restored: torch.Tensor, source: DecodedImage, width: int, height: int
) -> DecodedImage:
    """The engine's output (3, H, W), resized to ``width`` x ``height`` if it is not that size
    already (a tile accumulator and an image engine deliver it at that size).

    Alpha is resized from the source on its own and re-attached; the source's format, bit
    depth and grayscale flag carry over so the encoder can keep them.
    """
    rgb = resize(restored.permute(1, 2, 0).numpy(), width, height)
    alpha = None if source.alpha is None else resize(source.alpha, width, height)
    return DecodedImage(
        rgb=rgb,
        alpha=alpha,
        source_format=source.source_format,
        bit_depth=source.bit_depth,
        grayscale=source.grayscale,
        notes=source.notes,
    )


class Upscaler:
    """Runs one engine over whole images, one image at a time (the CLI, evaluation).

    A tile engine gets the image in tiles, ``batch_size`` per call, blended back here; an
    image engine gets the whole image and the size to restore it at.
    """

    def __init__(self, engine: Engine, batch_size: int = 4, fit_tiles: bool = True) -> None:
        self.engine = engine
        self.batch_size = batch_size
        self.fit_tiles = fit_tiles

    @property
    def progress_unit(self) -> str:
        """What :meth:`upscale` reports progress in: tiles, or denoising steps."""
        return "steps" if isinstance(self.engine, ImageEngine) else "tiles"

    def upscale(
        self,
        image: DecodedImage,
        size: OutputSize,
        max_output_pixels: int | None = None,
        on_progress: ProgressCallback | None = None,
        options: GenerationOptions | None = None,
    ) -> DecodedImage:
        """Upscale ``image`` to ``size``; ``on_progress(done, total)`` as work gets done.

        ``options`` (a diffusion engine's prompt, seed, steps, ...) go with the image; a tile
        engine has none to take.
        """
        width, height = size.resolve(image.width, image.height, max_output_pixels)
        if isinstance(self.engine, ImageEngine):
            restored = self._restore(image, (height, width), options, on_progress)
        else:
            restored = self._tiled(image, (height, width), on_progress)
        return finish_image(restored, image, width, height)

    def _restore(
        self,
        image: DecodedImage,
        size: tuple[int, int],
        options: GenerationOptions | None,
        on_progress: ProgressCallback | None,
    ) -> torch.Tensor:
        pixels = torch.from_numpy(np.ascontiguousarray(image.rgb.transpose(2, 0, 1)))
        task = ImageTask(pixels, size, options or GenerationOptions(), on_progress)
        (result,) = self.engine.restore([task])
        return result

    def _tiled(
        self, image: DecodedImage, size: tuple[int, int], on_progress: ProgressCallback | None
    ) -> torch.Tensor:
        """The image through a tile engine, blended straight into the ``size`` asked for."""
        engine: TileEngine = self.engine
        tiles, layout = cut_tiles(image, engine.tile_spec, fit=self.fit_tiles)
        accumulator = TileAccumulator(layout, engine.native_scale, size)
        for first in range(0, len(tiles), self.batch_size):
            accumulator.add(first, engine.run(tiles[first : first + self.batch_size]))
            if on_progress is not None:
                on_progress(min(first + self.batch_size, len(tiles)), len(tiles))
        return accumulator.result()
