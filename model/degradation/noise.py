"""Sensor noise of Real-ESRGAN's degradation model: Gaussian (read) and Poisson (shot).

Either kind comes in colour (independent per channel) or gray (one field for all three
channels, luminance noise). Each image has its own kind and level; the fields are drawn on
the images' device from ``generator``, which must live there too.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

LUMA = (0.299, 0.587, 0.114)


def add_noise(
    images: Tensor,
    gaussian: Tensor,
    sigma: Tensor,
    poisson_scale: Tensor,
    gray: Tensor,
    generator: torch.Generator,
) -> Tensor:
    """Images (B, 3, H, W) plus noise, clipped to [0, 1].

    ``gaussian`` (B,) picks Gaussian noise of ``sigma`` 8-bit levels, else Poisson noise times
    ``poisson_scale``; ``gray`` (B,) makes it the same in every channel. Each field is drawn
    only for the images that use it.
    """
    noise = torch.zeros_like(images)
    for kind, mono in ((True, False), (True, True), (False, False), (False, True)):
        chosen = (gaussian == kind) & (gray == mono)
        if not bool(chosen.any()):
            continue
        index = chosen.nonzero().flatten().to(images.device)
        subset = images[index]
        if kind:
            field = _gaussian(subset, mono, generator) * _per_image(sigma[chosen], subset) / 255.0
        else:
            field = _poisson(subset, mono, generator) * _per_image(poisson_scale[chosen], subset)
        noise[index] = field
    return (images + noise).clamp(0.0, 1.0)


def luma(images: Tensor) -> Tensor:
    """(B, 1, H, W) luminance with the BT.601 weights (what rgb_to_grayscale computes)."""
    weights = torch.tensor(LUMA, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    return (images * weights).sum(1, keepdim=True)


def _gaussian(images: Tensor, mono: bool, generator: torch.Generator) -> Tensor:
    """Unit-variance fields, one per channel or one shared by the three."""
    shape = (images.shape[0], 1, *images.shape[2:]) if mono else images.shape
    field = torch.randn(shape, generator=generator, device=images.device, dtype=images.dtype)
    return field.expand_as(images)


def _poisson(images: Tensor, mono: bool, generator: torch.Generator) -> Tensor:
    """Poisson counts minus the signal, in intensity units, of the 8-bit image (or its luma).

    Photon counts follow the image's own number of levels, as in Real-ESRGAN:
    ``2 ** ceil(log2(distinct values))`` per image (256 for any photograph with more than 128
    levels), so a flat or posterised image gets proportionally stronger noise.
    """
    signal = torch.round((luma(images) if mono else images).clamp(0.0, 1.0) * 255.0)
    distinct = [
        int(torch.bincount(image.flatten().long(), minlength=256).count_nonzero())
        for image in signal
    ]
    counts = [2.0 ** math.ceil(math.log2(max(2, levels))) for levels in distinct]
    vals = torch.tensor(counts, device=images.device, dtype=images.dtype).view(-1, 1, 1, 1)
    signal = signal / 255.0
    return (torch.poisson(signal * vals, generator=generator) / vals - signal).expand_as(images)


def _per_image(values: Tensor, images: Tensor) -> Tensor:
    return values.to(device=images.device, dtype=images.dtype).view(-1, 1, 1, 1)
