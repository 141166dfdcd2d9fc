"""SRVGGNetCompact, the small network of Real-ESRGAN's ``realesr-animevideov3``.

A plain stack of 3x3 convolutions with PReLU at the input resolution; the last one makes
``upscale**2`` sub-pixels per channel, a pixel shuffle puts them in place, and the
nearest-neighbour upscaled input is added, so the network only learns the residual. It
costs about a thirtieth of RRDBNet per pixel.

``scale`` below ``upscale`` reproduces the ncnn graphs of the model's x2 and x3 releases:
they run the same x4 network (the ``.bin`` files are byte-identical) and resize its output
by bicubic interpolation at 1/2 and 3/4, without antialiasing, as ncnn's ``Interp`` does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SRVGGNetCompact(nn.Module):
    """(N, 3, h, w) in [0, 1] -> (N, 3, scale * h, scale * w), unclamped.

    Convolutions and PReLUs are registered in the order the network applies them, which is
    the order of the exported ncnn graph; the weight converter relies on it.
    """

    def __init__(
        self,
        num_in_ch: int = 3,
        num_out_ch: int = 3,
        num_feat: int = 64,
        num_conv: int = 16,
        upscale: int = 4,
        scale: int | None = None,
    ) -> None:
        super().__init__()
        self.upscale = upscale
        self.scale = scale or upscale
        if not 1 <= self.scale <= upscale:
            raise ValueError(f"scale {self.scale} must be between 1 and the upscale {upscale}")
        layers: list[nn.Module] = [nn.Conv2d(num_in_ch, num_feat, 3, padding=1)]
        layers.append(nn.PReLU(num_feat))
        for _ in range(num_conv):
            layers += [nn.Conv2d(num_feat, num_feat, 3, padding=1), nn.PReLU(num_feat)]
        layers.append(nn.Conv2d(num_feat, num_out_ch * upscale**2, 3, padding=1))
        self.body = nn.Sequential(*layers)
        self.shuffle = nn.PixelShuffle(upscale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.shuffle(self.body(x)) + F.interpolate(x, scale_factor=self.upscale)
        if self.scale == self.upscale:
            return out
        size = (x.shape[-2] * self.scale, x.shape[-1] * self.scale)
        return F.interpolate(out, size=size, mode="bicubic", align_corners=False)
