"""Real-ESRGAN's second-order degradation (Wang et al., ICCV-W 2021), batched in torch.

HR images in, LR images out (``1 / scale`` per side, on 8-bit levels), on the CPU or a GPU:

1. stage 1: blur (always), resize (up, down or keep, relative to the HR), noise, JPEG;
2. stage 2: blur (with a probability), resize relative to the LR size, noise;
3. the final resize to the LR size with a sinc filter (or none) and a JPEG, in random order.

A degradation is drawn first (:meth:`RealESRGANDegradation.draw`: every kernel, factor,
level and quality, from one CPU generator) and then applied (:meth:`apply`), so a seed
fixes it on any device and tests can check what was drawn. What can differ per image is
drawn per image: kernels, whether stage 2 blurs, the noise kind, colour and level, JPEG
qualities, whether a final sinc is used, the final gray conversion. The resize factors and
modes and the order of the final steps are drawn once per batch, since a batch must keep
one shape (Real-ESRGAN draws those per batch for the same reason).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from megasr.errors import InvalidParameterError
from megasr.model.degradation.config import DegradationConfig, StageConfig
from megasr.model.degradation.draws import chance, child_seed, choice, integers, uniform
from megasr.model.degradation.jpeg import jpeg_round_trip
from megasr.model.degradation.kernels import (
    KernelDraw,
    draw_blur_kernels,
    filter2d,
    pulse_kernels,
    sinc_kernels,
)
from megasr.model.degradation.noise import add_noise, luma

DIRECTIONS = ("up", "down", "keep")


@dataclass(frozen=True)
class StageDraw:
    """What one stage does to each image of a batch."""

    kernels: KernelDraw
    blurred: Tensor
    """Bool (B,): whether the image is blurred (with ``kernels.kernels``) at all."""
    direction: str
    factor: float
    resize_mode: str
    gaussian: Tensor
    """Bool (B,): Gaussian noise, else Poisson."""
    sigma: Tensor
    poisson_scale: Tensor
    gray_noise: Tensor
    jpeg_quality: Tensor

    @property
    def blur_kernels(self) -> Tensor:
        """(B, k, k): the drawn kernel where the image is blurred, the identity elsewhere."""
        identity = pulse_kernels(*self.kernels.kernels.shape[:2])
        return torch.where(self.blurred[:, None, None], self.kernels.kernels, identity)


@dataclass(frozen=True)
class DegradationDraw:
    """Everything random about degrading one batch."""

    first: StageDraw
    second: StageDraw
    final_sinc: Tensor
    """Bool (B,): whether the final resize is followed by a sinc filter."""
    final_kernels: Tensor
    final_resize_mode: str
    resize_before_jpeg: bool
    gray: Tensor
    noise_seed: int


class RealESRGANDegradation:
    """The degradation of ``config``; call it with HR images and a CPU generator."""

    def __init__(self, config: DegradationConfig | None = None) -> None:
        self.config = config or DegradationConfig()

    def __call__(self, hr: Tensor, generator: torch.Generator) -> Tensor:
        return self.apply(hr, self.draw(hr.shape[0], generator))

    def draw(self, batch: int, generator: torch.Generator) -> DegradationDraw:
        """Draw a batch's degradation; the generator advances the same way for any outcome."""
        config, side = self.config, self.config.kernel_side
        first = _draw_stage(config.first, batch, side, generator)
        second = _draw_stage(config.second, batch, side, generator)
        sizes = choice(torch.tensor(config.final_sinc_kernel_sizes), batch, generator)
        cutoff = uniform(config.final_sinc_cutoff, batch, generator)
        final_sinc = chance(config.final_sinc_probability, batch, generator)
        kernels = torch.where(
            final_sinc[:, None, None],
            sinc_kernels(side, sizes, cutoff).float(),
            pulse_kernels(batch, side),
        )
        return DegradationDraw(
            first=first,
            second=second,
            final_sinc=final_sinc,
            final_kernels=kernels,
            final_resize_mode=_pick(config.final_resize_modes, generator),
            resize_before_jpeg=bool(chance(config.resize_before_jpeg_probability, 1, generator)),
            gray=chance(config.gray_probability, batch, generator),
            noise_seed=child_seed(generator),
        )

    @torch.no_grad()
    def apply(self, hr: Tensor, draw: DegradationDraw) -> Tensor:
        """HR images (B, 3, H, W) in [0, 1] -> LR (B, 3, H // scale, W // scale), 8-bit levels."""
        _, channels, height, width = hr.shape
        scale = self.config.scale
        target = (height // scale, width // scale)
        if channels != 3 or min(target) < 1:
            raise InvalidParameterError(
                f"the degradation takes RGB images of at least {scale}x{scale} pixels, "
                f"got {tuple(hr.shape)}"
            )
        noise = torch.Generator(hr.device).manual_seed(draw.noise_seed)
        out = _stage(hr.float(), draw.first, (height, width), noise)
        out = jpeg_round_trip(out, draw.first.jpeg_quality)
        out = _stage(out, draw.second, target, noise)
        quality = draw.second.jpeg_quality
        if draw.resize_before_jpeg:
            out = jpeg_round_trip(_final_resize(out, target, draw), quality)
        else:
            out = _final_resize(jpeg_round_trip(out, quality), target, draw)
        out = _to_gray(out, draw.gray)
        return (torch.round(out.clamp(0.0, 1.0) * 255.0) / 255.0).to(hr.dtype)


def _draw_stage(
    config: StageConfig, batch: int, side: int, generator: torch.Generator
) -> StageDraw:
    kernels = draw_blur_kernels(config.blur, batch, side, generator)
    blurred = chance(config.blur.probability, batch, generator)
    weights = torch.tensor(config.resize_probabilities, dtype=torch.float64)
    direction = DIRECTIONS[int(torch.multinomial(weights, 1, generator=generator))]
    low, high = config.resize_range
    up = float(uniform((1.0, high), 1, generator))
    down = float(uniform((low, 1.0), 1, generator))
    return StageDraw(
        kernels=kernels,
        blurred=blurred,
        direction=direction,
        factor={"up": up, "down": down, "keep": 1.0}[direction],
        resize_mode=_pick(config.resize_modes, generator),
        gaussian=chance(config.gaussian_noise_probability, batch, generator),
        sigma=uniform(config.noise_sigma, batch, generator),
        poisson_scale=uniform(config.poisson_scale, batch, generator),
        gray_noise=chance(config.gray_noise_probability, batch, generator),
        jpeg_quality=integers(config.jpeg_quality, batch, generator),
    )


def _stage(
    images: Tensor, draw: StageDraw, base: tuple[int, int], generator: torch.Generator
) -> Tensor:
    """Blur, resize to ``factor`` times ``base`` (height, width), add noise (clipped)."""
    if bool(draw.blurred.any()):
        images = filter2d(images, draw.blur_kernels)
    size = (max(1, int(base[0] * draw.factor)), max(1, int(base[1] * draw.factor)))
    images = _resize(images, size, draw.resize_mode)
    return add_noise(
        images, draw.gaussian, draw.sigma, draw.poisson_scale, draw.gray_noise, generator
    )


def _final_resize(images: Tensor, target: tuple[int, int], draw: DegradationDraw) -> Tensor:
    images = _resize(images, target, draw.final_resize_mode)
    return filter2d(images, draw.final_kernels) if bool(draw.final_sinc.any()) else images


def _resize(images: Tensor, size: tuple[int, int], mode: str) -> Tensor:
    """torch's resize without antialiasing, as Real-ESRGAN resizes (the aliasing is wanted)."""
    if tuple(images.shape[-2:]) == size:
        return images
    corners = None if mode == "area" else False
    return F.interpolate(images, size=size, mode=mode, align_corners=corners)


def _to_gray(images: Tensor, gray: Tensor) -> Tensor:
    if not bool(gray.any()):
        return images
    gray = gray.to(images.device).view(-1, 1, 1, 1)
    return torch.where(gray, luma(images).expand_as(images), images)


def _pick(options: tuple[str, ...], generator: torch.Generator) -> str:
    return options[int(torch.randint(len(options), (1,), generator=generator))]
