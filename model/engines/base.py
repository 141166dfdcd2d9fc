"""The engine interface: load, warm up, say the tile shape, run a batch of tiles.

An engine is only the network and its numerics. Splitting images into tiles, blending them
back and resizing to the requested size live in :mod:`megasr.model.tiler` and
:mod:`megasr.model.upscaler`, so every engine gets them for free and the worker can batch
tiles of different images through the same call.

A *conditional* engine (a diffusion model) also takes per-request options: a prompt, a seed,
a number of sampling steps. They travel with the tiles, one :class:`GenerationOptions` per
tile, so tiles of jobs with different prompts or seeds can still share one call.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import ClassVar

import torch

from megasr.errors import InvalidParameterError


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


@dataclass(frozen=True)
class GenerationOptions:
    """What one request asks of a conditional engine; None means the engine's own default.

    ``color_fix`` names one of the engine's colour corrections; the engine checks the name,
    since only it knows which it has.
    """

    prompt: str | None = None
    negative_prompt: str | None = None
    steps: int | None = None
    guidance_scale: float | None = None
    seed: int | None = None
    color_fix: str | None = None

    @classmethod
    def of(cls, source: object) -> GenerationOptions:
        """The options as named on ``source``: request parameters, or parsed CLI flags."""
        return cls(**{field.name: getattr(source, field.name) for field in fields(cls)})

    def __post_init__(self) -> None:
        if self.steps is not None and self.steps < 1:
            raise InvalidParameterError(f"steps must be at least 1, got {self.steps}")
        if self.guidance_scale is not None and not 0 <= self.guidance_scale < float("inf"):
            raise InvalidParameterError(
                f"guidance_scale must be a number of at least 0, got {self.guidance_scale}"
            )
        if self.seed is not None and not 0 <= self.seed < 2**64:
            raise InvalidParameterError(f"seed must be between 0 and 2^64-1, got {self.seed}")


class Engine(ABC):
    """A super-resolution network, resident on one device.

    ``conditional`` engines take a :class:`GenerationOptions` per tile in :meth:`run`; the
    others are never passed any (:func:`run_tiles` sees to it).
    """

    name: ClassVar[str]
    native_scale: ClassVar[int]
    conditional: ClassVar[bool] = False

    @abstractmethod
    def load(self, device: torch.device, dtype: torch.dtype | None = None) -> None:
        """Put the weights on ``device``; ``dtype`` None picks the engine's fast path."""

    @property
    @abstractmethod
    def tile_spec(self) -> TileSpec:
        """The tile shape :meth:`run` is built for."""

    @abstractmethod
    def run(
        self, tiles: torch.Tensor, options: Sequence[GenerationOptions] | None = None
    ) -> torch.Tensor:
        """Upscale a batch of tiles.

        ``tiles`` is (N, 3, h, w) float32 in [0, 1] on any device; the result is
        (N, 3, h * native_scale, w * native_scale) float32 in [0, 1] on the CPU.
        A conditional engine takes ``options``, one per tile (None: its defaults for every
        tile); an engine that is not conditional is never passed options, so it may leave the
        parameter out of its own signature.
        """

    def warmup(self) -> None:
        """Run one tile so the first real request pays no one-off costs."""
        size = self.tile_spec.size
        self.run(torch.zeros(1, 3, size, size))


def run_tiles(
    engine: Engine, tiles: torch.Tensor, options: Sequence[GenerationOptions] | None = None
) -> torch.Tensor:
    """``engine.run(tiles)``, with the per-tile ``options`` when the engine is conditional.

    The callers that batch tiles (the upscaler, the worker) go through here, so an engine
    that takes no options never sees the argument.
    """
    if not engine.conditional:
        return engine.run(tiles)
    if options is not None and len(options) != len(tiles):
        raise ValueError(f"{len(options)} generation options for {len(tiles)} tiles")
    return engine.run(tiles, options)
