"""Restored validation images during training: what the model makes of held-out LR images.

Sampling goes through the model's own inference path (``MegaSRModel.prepare`` and the
pipeline), with fewer steps, so the pictures in TensorBoard are what ``megasr upscale``
would give with the weights of that step.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from megasr.model.megasr.components import MegaSRModel


@torch.no_grad()
def restore_samples(
    model: MegaSRModel, pairs: list[tuple[Tensor, Tensor]], steps: int, seed: int
) -> list[Tensor]:
    """One (3, H, 3W) strip per (HR, LR) pair: the bicubic LR, the restoration, the HR."""
    pipeline = model.pipeline()
    options = replace(model.config.inference, steps=steps)
    strips = []
    for hr, lr in pairs:
        size = (hr.shape[-2], hr.shape[-1])
        request = model.prepare(lr, size, seed=seed)
        restored = pipeline.restore_one(request, options).cpu()
        strips.append(torch.cat([request.lr_up.float().cpu(), restored, hr.float().cpu()], -1))
    return strips
