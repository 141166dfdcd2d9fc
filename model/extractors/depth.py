"""Depth guidance: any ``transformers`` depth estimator, normalised to 0..1 per image."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn
from transformers import AutoModelForDepthEstimation, PreTrainedModel

from megasr.model.extractors.pretrained import PixelSpec, load_model


class DepthExtractor(nn.Module):
    """A depth model and its input convention.

    The raw prediction is relative (MiDaS-style inverse depth for DPT and Depth Anything:
    near is large), so only its per-image ordering means anything: it is resized to the
    image and stretched to [0, 1], min to 0 and max to 1. A flat prediction gives zeros.
    """

    def __init__(self, model: PreTrainedModel, pixels: PixelSpec) -> None:
        super().__init__()
        self.model = model
        self.pixels = pixels

    @classmethod
    def from_pretrained(cls, source: str) -> DepthExtractor:
        return cls(
            load_model(AutoModelForDepthEstimation, source, "depth"),
            PixelSpec.from_pretrained(source, "depth"),
        )

    def forward(self, images: Tensor) -> Tensor:
        """Depth maps (B, 1, H, W) in [0, 1] of RGB images (B, 3, H, W) in [0, 1]."""
        pixel_values = self.pixels(images, self.model.dtype)
        depth = self.model(pixel_values=pixel_values).predicted_depth.float().unsqueeze(1)
        depth = F.interpolate(depth, size=images.shape[-2:], mode="bilinear", align_corners=False)
        low = depth.amin(dim=(1, 2, 3), keepdim=True)
        high = depth.amax(dim=(1, 2, 3), keepdim=True)
        return (depth - low) / (high - low).clamp_min(1e-12)
