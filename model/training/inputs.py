"""The LR image as MegaSR's extractors and ControlNet see it: bicubic-upscaled to the HR size.

At sampling time the guidance maps are computed on ``x_lr_up``, the LR image upscaled
bicubically to the output size and clipped to [0, 1]; training shows the networks the same.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def upscale_to(lr: Tensor, hr: Tensor) -> Tensor:
    """``lr`` (B, 3, h, w) resized bicubically to the height and width of ``hr``."""
    upscaled = F.interpolate(lr, size=hr.shape[-2:], mode="bicubic", align_corners=False)
    return upscaled.clamp(0.0, 1.0)
