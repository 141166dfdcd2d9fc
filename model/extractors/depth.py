"""Depth guidance: any ``transformers`` depth estimator, normalised to 0..1 per image."""

from __future__ import annotations

from collections.abc import Sequence

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

    def forward(self, images: Sequence[Tensor]) -> list[Tensor]:
        """One depth map (1, H, W) in [0, 1] per RGB image (3, H, W) in [0, 1], any sizes.

        The model sees every image at its input size in one batch; each prediction is resized
        to its own image and stretched over that whole image.
        """
        pixel_values = self.pixels(images, self.model.dtype)
        predictions = self.model(pixel_values=pixel_values).predicted_depth.float()
        return [
            _stretched(F.interpolate(depth[None, None], size=image.shape[-2:], mode="bilinear"))[0]
            for depth, image in zip(predictions, images, strict=True)
        ]


def _stretched(depth: Tensor) -> Tensor:
    low, high = depth.amin(), depth.amax()
    return (depth - low) / (high - low).clamp_min(1e-12)
