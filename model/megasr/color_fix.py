"""Colour correction of the restored image against the bicubic-upscaled LR image.

Diffusion restores texture but can drift in colour; the LR image's colour is trusted.
AdaIN matches each channel's mean and standard deviation to the LR image; the wavelet fix
keeps the output's high frequencies and takes the low frequencies from the LR image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from megasr.model.megasr.config import ColorFix

WAVELET_LEVELS = 5


def color_fix(image: torch.Tensor, reference: torch.Tensor, method: ColorFix) -> torch.Tensor:
    """Correct ``image`` (B, 3, H, W) in [0, 1] towards ``reference`` of the same shape."""
    if method == "none":
        return image
    if method == "adain":
        return adain_fix(image, reference)
    return wavelet_fix(image, reference)


def adain_fix(image: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    mean, std = _channel_stats(image)
    ref_mean, ref_std = _channel_stats(reference)
    return ((image - mean) / std * ref_std + ref_mean).clamp(0.0, 1.0)


def wavelet_fix(image: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    high = image - low_frequency(image)
    return (high + low_frequency(reference)).clamp(0.0, 1.0)


def low_frequency(image: torch.Tensor, levels: int = WAVELET_LEVELS) -> torch.Tensor:
    """The residual of an à-trous wavelet decomposition: ``levels`` dilated 3x3 blurs."""
    kernel = torch.tensor([0.25, 0.5, 0.25], dtype=image.dtype, device=image.device)
    kernel = (kernel[:, None] * kernel[None, :]).expand(image.shape[1], 1, 3, 3)
    low = image
    for level in range(levels):
        dilation = 2**level
        padded = F.pad(low, (dilation,) * 4, mode="replicate")
        low = F.conv2d(padded, kernel, dilation=dilation, groups=image.shape[1])
    return low


def _channel_stats(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    flat = image.flatten(2)
    mean = flat.mean(-1)[:, :, None, None]
    std = flat.std(-1)[:, :, None, None] + 1e-5
    return mean, std
