"""One image in, one image of the requested size out, through any engine.

The engine upscales by its native factor, tile by tile; this module owns the rest: alpha
is split off and resized on its own (an SR network would invent texture in a mask), the
tiles are blended back, and a high-quality resize takes the native output to the exact
requested size (a downscale for scales below the native one, an upscale above it).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from megasr.imaging.image import DecodedImage
from megasr.imaging.resize import resize
from megasr.imaging.sizing import OutputSize
from megasr.model.engines.base import Engine
from megasr.model.tiler import fitted_tile, plan_tiles, run_tiled

TileProgress = Callable[[int, int], None]


class Upscaler:
    """Runs one engine over whole images.

    ``fit_tiles`` shrinks the tile to the image when one image is processed alone (the CLI);
    the worker keeps the engine's fixed tile so tiles of many images share a batch.
    """

    def __init__(self, engine: Engine, batch_size: int = 4, fit_tiles: bool = True) -> None:
        self.engine = engine
        self.batch_size = batch_size
        self.fit_tiles = fit_tiles

    def count_tiles(self, image: DecodedImage) -> int:
        """How many engine tiles ``image`` takes (for progress bars)."""
        return len(self._layout(image))

    def upscale(
        self,
        image: DecodedImage,
        size: OutputSize,
        max_output_pixels: int | None = None,
        on_tiles: TileProgress | None = None,
    ) -> DecodedImage:
        """Upscale ``image`` to ``size``; ``on_tiles(done, total)`` after each engine batch."""
        width, height = size.resolve(image.width, image.height, max_output_pixels)
        layout = self._layout(image)
        done = 0

        def progress(count: int) -> None:
            nonlocal done
            done += count
            if on_tiles is not None:
                on_tiles(done, len(layout))

        pixels = torch.from_numpy(np.ascontiguousarray(image.rgb.transpose(2, 0, 1)))
        native = run_tiled(
            pixels, self.engine.run, layout, self.engine.native_scale, self.batch_size, progress
        )
        rgb = native.permute(1, 2, 0).numpy()
        if rgb.shape[:2] != (height, width):
            rgb = resize(rgb, width, height)
        alpha = None if image.alpha is None else resize(image.alpha, width, height)
        return DecodedImage(
            rgb=rgb,
            alpha=alpha,
            source_format=image.source_format,
            bit_depth=image.bit_depth,
            grayscale=image.grayscale,
            notes=image.notes,
        )

    def _layout(self, image: DecodedImage):
        spec = self.engine.tile_spec
        tile = spec.size
        if self.fit_tiles:  # a fitted tile smaller than the spec holds the whole image
            tile = fitted_tile(image.height, image.width, spec.size, spec.multiple)
        return plan_tiles(image.height, image.width, tile, spec.overlap, spec.multiple)
