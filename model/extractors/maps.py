"""The guidance maps that steer every MSFM of a MegaSR model."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass(frozen=True)
class GuidanceMaps:
    """Three maps of one batch of images, all float in [0, 1] and at the images' size.

    ``hed``: edge probability (B, 1, H, W). ``depth``: the depth model's output normalised to
    0..1 per image (B, 1, H, W); for relative inverse-depth models such as DPT and Depth
    Anything near is bright. ``seg``: class probabilities rendered as palette colours
    (B, 3, H, W), see :func:`megasr.model.extractors.segmentation.class_palette`.
    """

    hed: Tensor
    depth: Tensor
    seg: Tensor
