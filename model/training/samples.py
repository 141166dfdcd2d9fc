"""Restored validation images during training: what the model makes of held-out LR images.

Sampling goes through the model's own inference path (``MegaSRPipeline.prepare`` and
``restore``, all pairs restored together), with fewer steps, so the pictures in TensorBoard are
what ``megasr upscale`` would give with the weights of that step.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from megasr.model.megasr.pipeline import MegaSRPipeline, RestoreInput


@torch.no_grad()
def restore_samples(
    model: MegaSRPipeline, pairs: list[tuple[Tensor, Tensor]], steps: int, seed: int
) -> list[Tensor]:
    """One (3, H, 3W) strip per (HR, LR) pair: the bicubic LR, the restoration, the HR."""
    options = replace(model.inference, steps=steps)
    inputs = [
        RestoreInput(lr, tuple(hr.shape[-2:]), seed=seed, options=options) for hr, lr in pairs
    ]
    requests = model.prepare(inputs)
    restored = model.restore(requests)
    return [
        torch.cat([request.lr_up.float().cpu(), image, hr.float().cpu()], -1)
        for (hr, _), request, image in zip(pairs, requests, restored, strict=True)
    ]
