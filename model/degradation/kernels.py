"""The blur kernels of Real-ESRGAN's degradation model, drawn and applied a batch at a time.

Camera blur is a random 2-D kernel: a Gaussian, a generalized Gaussian (sharper or flatter
top, shape ``beta``) or a plateau-shaped one, isotropic or rotated anisotropic, and
sometimes a sinc (ideal circular low-pass), which gives the ringing and overshoot that
sharpening and compression add to real photographs. Every kernel of a batch lives on one
odd-sided grid (the largest size any config draws); a smaller kernel is zero outside its
own square, exactly as Real-ESRGAN pads its kernels to 21x21. Kernels sum to one and are
point-symmetric, so correlation (what ``conv2d`` computes) equals convolution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import get_args

import torch
import torch.nn.functional as F
from torch import Tensor

from megasr.model.degradation.config import BlurConfig, KernelShape
from megasr.model.degradation.draws import chance, choice, uniform

SHAPES: tuple[KernelShape, ...] = get_args(KernelShape)


@dataclass(frozen=True)
class KernelDraw:
    """A batch of kernels (B, k, k) and what was drawn for each (for tests and logs)."""

    kernels: Tensor
    sizes: Tensor
    sinc: Tensor
    """Bool (B,): a sinc kernel instead of the mixture."""
    shapes: Tensor
    """Index into :data:`SHAPES` of the mixture draw (meaningless where ``sinc``)."""


def draw_blur_kernels(
    config: BlurConfig, batch: int, side: int, generator: torch.Generator
) -> KernelDraw:
    """``batch`` kernels as one Real-ESRGAN stage draws them, on a ``side`` x ``side`` grid.

    Every random number is drawn for every sample whatever the branch, so the generator
    advances the same way for any outcome and a seed fixes the whole batch.
    """
    sizes = choice(torch.tensor(config.kernel_sizes), batch, generator)
    sinc = chance(config.sinc_probability, batch, generator)
    weights = torch.tensor([config.kernel_probabilities.get(s, 0.0) for s in SHAPES])
    shapes = torch.multinomial(weights, batch, replacement=True, generator=generator)
    sigma_x = uniform(config.sigma, batch, generator)
    sigma_y = uniform(config.sigma, batch, generator)
    angle = uniform((-math.pi, math.pi), batch, generator)
    below_one = chance(0.5, batch, generator)
    generalized = _beta(config.generalized_beta, below_one, generator)
    plateau = _beta(config.plateau_beta, below_one, generator)
    small = sizes < config.sinc_small_kernel
    cutoff = torch.where(
        small,
        uniform(config.sinc_cutoff_small, batch, generator),
        uniform(config.sinc_cutoff, batch, generator),
    )

    names = [SHAPES[i] for i in shapes.tolist()]
    isotropic = torch.tensor([not name.endswith("aniso") for name in names])
    kind = torch.tensor([_family(name) for name in names])
    sigma_y = torch.where(isotropic, sigma_x, sigma_y)
    angle = torch.where(isotropic, torch.zeros_like(angle), angle)
    beta = torch.where(kind == 1, generalized, torch.where(kind == 2, plateau, 1.0))
    mixture = gaussian_family_kernels(side, sizes, sigma_x, sigma_y, angle, beta, kind == 2)
    kernels = torch.where(sinc[:, None, None], sinc_kernels(side, sizes, cutoff), mixture)
    return KernelDraw(kernels.float(), sizes, sinc, shapes)


def gaussian_family_kernels(
    side: int,
    sizes: Tensor,
    sigma_x: Tensor,
    sigma_y: Tensor,
    angle: Tensor,
    beta: Tensor,
    plateau: Tensor,
) -> Tensor:
    """Kernels on the quadratic form ``d = x' S^-1 x`` of a rotated covariance ``S``.

    Gaussian ``exp(-d / 2)`` (beta = 1); generalized ``exp(-d^beta / 2)``; plateau
    ``1 / (1 + d^beta)``. Float64 (B, side, side), each normalised over its own square.
    """
    x, y = _grid(side)
    cos, sin = torch.cos(angle)[:, None, None], torch.sin(angle)[:, None, None]
    # Coordinates in the kernel's own axes: S^-1 = R diag(1/sx^2, 1/sy^2) R'.
    u = cos * x + sin * y
    v = -sin * x + cos * y
    d = (u / sigma_x[:, None, None]) ** 2 + (v / sigma_y[:, None, None]) ** 2
    power = d ** beta[:, None, None]
    kernels = torch.where(plateau[:, None, None], 1.0 / (1.0 + power), torch.exp(-0.5 * power))
    return _normalise(kernels * _support(side, sizes))


def sinc_kernels(side: int, sizes: Tensor, cutoff: Tensor) -> Tensor:
    """Ideal circular low-pass filters with angular ``cutoff`` (radians per pixel)."""
    x, y = _grid(side)
    radius = torch.hypot(x, y)[None].expand(sizes.shape[0], side, side)
    wc = cutoff[:, None, None]
    safe = torch.where(radius == 0, 1.0, radius)
    kernels = wc * torch.special.bessel_j1(wc * safe) / (2 * math.pi * safe)
    kernels = torch.where(radius == 0, wc**2 / (4 * math.pi), kernels)  # the limit at r = 0
    return _normalise(kernels * _support(side, sizes))


def pulse_kernels(batch: int, side: int) -> Tensor:
    """Identity kernels: filtering with them changes nothing."""
    kernels = torch.zeros(batch, side, side)
    kernels[:, side // 2, side // 2] = 1.0
    return kernels


def filter2d(images: Tensor, kernels: Tensor) -> Tensor:
    """Each image (B, C, H, W) filtered with its own kernel (B, k, k), size kept.

    Borders are mirrored (reflect) as Real-ESRGAN does; an image too small to mirror a
    kernel's half-width (under 11 pixels for 21-pixel kernels) has its edge repeated.
    """
    batch, channels, height, width = images.shape
    pad = kernels.shape[-1] // 2
    mode = "reflect" if pad < min(height, width) else "replicate"
    padded = F.pad(images, (pad, pad, pad, pad), mode=mode)
    weight = kernels.to(images).repeat_interleave(channels, dim=0)[:, None]
    merged = padded.reshape(1, batch * channels, *padded.shape[-2:])
    return F.conv2d(merged, weight, groups=batch * channels).view(batch, channels, height, width)


def _family(name: str) -> int:
    """0 Gaussian, 1 generalized, 2 plateau."""
    return 1 if name.startswith("generalized") else 2 if name.startswith("plateau") else 0


def _beta(bounds: tuple[float, float], below_one: Tensor, generator: torch.Generator) -> Tensor:
    """Real-ESRGAN's draw: half the time in (low, 1), otherwise in (1, high)."""
    batch = below_one.shape[0]
    low = uniform((bounds[0], min(1.0, bounds[1])), batch, generator)
    high = uniform((max(1.0, bounds[0]), bounds[1]), batch, generator)
    return torch.where(below_one, low, high)


def _grid(side: int) -> tuple[Tensor, Tensor]:
    axis = torch.arange(side, dtype=torch.float64) - side // 2
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    return x, y


def _support(side: int, sizes: Tensor) -> Tensor:
    """1 inside each kernel's own centred square of side ``sizes[i]``, 0 outside."""
    axis = (torch.arange(side) - side // 2).abs()
    inside = axis[None, :] <= (sizes[:, None] // 2)
    return (inside[:, :, None] & inside[:, None, :]).double()


def _normalise(kernels: Tensor) -> Tensor:
    return kernels / kernels.sum(dim=(-2, -1), keepdim=True)
