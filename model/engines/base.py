"""The engine interface: two kinds of engine behind one small base.

- A :class:`TileEngine` (a GAN such as Real-ESRGAN) is a local network: it upscales fixed-size
  tiles by its native factor, and tiling, blending and resizing to the requested size live
  outside it (:mod:`megasr.model.tiler`, :mod:`megasr.model.upscaler`). Any tile of any image
  can share a call with any other, which is how the worker batches across jobs.
- An :class:`ImageEngine` (a diffusion model such as MegaSR) must see an image as one image:
  its tags, image embedding, guidance maps, colour fix and start noise belong to the whole
  picture, and its tiles are blended at every denoising step, in latent space. It takes whole
  images (:class:`ImageTask`), each with the size it must come out at and the request's
  :class:`GenerationOptions`, tiles them itself, and batches tiles of many images into each
  forward pass.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields

import torch

from megasr.errors import InvalidParameterError

ProgressCallback = Callable[[int, int], None]
"""``(done, total)`` after each unit of work: tiles for a tile engine, steps for an image one."""


@dataclass(frozen=True)
class TileSpec:
    """The fixed tile shape a tile engine wants.

    ``size`` is the side of a square input tile in pixels, ``overlap`` the pixels shared by
    neighbouring tiles (blended on reassembly), ``multiple`` what image sides are padded to.
    ``whole_up_to`` (0: ``size``) is the longest image side that a caller fitting tiles to
    the image runs as one tile of the image's own size: just above one tile, four tiles
    would repeat their overlap and padding over more than twice the image's pixels, which
    costs more than one larger tile (for Real-ESRGAN on the CPU up to about 5/3 of its
    192-pixel tile, docs/benchmarks.md).
    """

    size: int
    overlap: int
    multiple: int = 1
    whole_up_to: int = 0

    def __post_init__(self) -> None:
        if self.size < 1 or self.overlap < 0 or self.multiple < 1 or self.whole_up_to < 0:
            raise ValueError(f"invalid tile spec {self}")
        if self.overlap >= self.size:
            raise ValueError(
                f"tile overlap {self.overlap} must be smaller than the tile {self.size}"
            )
        if self.size % self.multiple:
            raise ValueError(f"tile size {self.size} is not a multiple of {self.multiple}")


@dataclass(frozen=True)
class GenerationOptions:
    """What one request asks of a diffusion engine; None means the engine's own default.

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


class Cancelled(Exception):
    """An image whose ``should_cancel`` said stop; an image engine returns it in its place."""


@dataclass
class ImageTask:
    """One whole image for an :class:`ImageEngine`.

    ``pixels`` (3, h, w) float32 in [0, 1]; ``size`` the (height, width) the result must have.
    ``on_progress(done, total)`` follows the image's denoising steps; ``should_cancel`` is
    asked before each of them, and True drops the image (its result is :class:`Cancelled`).
    """

    pixels: torch.Tensor
    size: tuple[int, int]
    options: GenerationOptions = field(default_factory=GenerationOptions)
    on_progress: ProgressCallback | None = None
    should_cancel: Callable[[], bool] | None = None


class Engine(ABC):
    """A super-resolution network, resident on one device.

    ``name`` and ``native_scale`` are class attributes, or set per instance by an engine
    class that runs several models (the Real-ESRGAN family).
    """

    name: str
    native_scale: int

    @abstractmethod
    def load(self, device: torch.device, dtype: torch.dtype | None = None) -> None:
        """Put the weights on ``device``; ``dtype`` None picks the engine's fast path."""

    @abstractmethod
    def warmup(self) -> None:
        """Run once on a small input so the first real request pays no one-off costs."""


class TileEngine(Engine):
    """An engine of fixed-shape tiles, upscaled by :attr:`native_scale`."""

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
        size = self.tile_spec.size
        self.run(torch.zeros(1, 3, size, size))


class ImageEngine(Engine):
    """An engine of whole images that tiles, batches and restores them itself.

    :attr:`native_scale` is the factor it was trained for; it restores at any requested size.
    """

    oom_retries: int = 0
    """Forward passes rerun at a smaller batch after running out of device memory."""

    @abstractmethod
    def restore(
        self,
        tasks: Sequence[ImageTask],
        on_batch: Callable[[int], None] | None = None,
    ) -> list[torch.Tensor | Cancelled]:
        """Restore every task's image at its ``size``: (3, H, W) float32 in [0, 1] on the CPU,
        or :class:`Cancelled`. ``on_batch(n)`` after each forward pass of ``n`` tiles."""

    @abstractmethod
    def tiles_per_step(self, height: int, width: int) -> int:
        """Tiles one denoising step of an output of ``height`` x ``width`` takes."""

    def warmup(self) -> None:
        side = 16
        self.restore([ImageTask(torch.zeros(3, side, side), (side, side))])
