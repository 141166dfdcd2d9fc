"""MSFM, the Multimodal Signal Fusion Module, applied after every transformer block.

Stage 1 turns depth and segmentation into region guidance ``G_r``; stage 2 modulates the
parameter-free normalised features twice (SAFT from the HED edges ``G_h`` and from ``G_r``)
and sums the two. The module adds ``ZeroConv1x1(F_h + F_r)`` to the block's output, so a
fresh MSFM passes the pretrained features through unchanged.

The module lives at ``<transformer>.msfm`` and runs from a forward hook on the transformer
(:func:`apply_msfm`): the pretrained keys of the transformer stay exactly as they were, which
``from_pretrained`` and ``ControlNetModel.from_unet`` need.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from diffusers.models.transformers.transformer_2d import Transformer2DModel
from torch import nn

from megasr.model.megasr.conditions import CONDITIONS_KEY, MegaSRConditions
from megasr.model.megasr.config import ModulesConfig


class SqueezeExcitation(nn.Module):
    """Channel attention: global pool, FC, ReLU, FC, sigmoid."""

    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        hidden = channels // reduction
        self.down = nn.Linear(channels, hidden)
        self.up = nn.Linear(hidden, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = torch.sigmoid(self.up(F.relu(self.down(x.mean(dim=(2, 3))))))
        return weights[:, :, None, None]


class RegionGuidance(nn.Module):
    """Stage 1: ``X = SiLU(GroupNorm(Conv3x3([G_d, G_s])))``, ``G_r = X * CA(X)``."""

    def __init__(self, config: ModulesConfig) -> None:
        super().__init__()
        channels = config.guidance_channels
        self.conv = nn.Conv2d(1 + 3, channels, 3, padding=1)
        self.norm = nn.GroupNorm(config.guidance_norm_groups, channels)
        self.attention = SqueezeExcitation(channels, config.se_reduction)

    def forward(self, depth: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        x = F.silu(self.norm(self.conv(torch.cat([depth, seg], dim=1))))
        return x * self.attention(x)


class SAFT(nn.Module):
    """Spatially adaptive feature transform: ``F_n * (1 + gamma(S)) + beta(S)``, ``S = MLP(G)``."""

    def __init__(self, guidance_channels: int, channels: int, config: ModulesConfig) -> None:
        super().__init__()
        hidden, kernel = config.saft_hidden, config.saft_kernel_size
        self.mlp = nn.Sequential(nn.Conv2d(guidance_channels, hidden, 3, padding=1), nn.SiLU())
        self.gamma = nn.Conv2d(hidden, channels, kernel, padding=kernel // 2)
        self.beta = nn.Conv2d(hidden, channels, kernel, padding=kernel // 2)

    def forward(self, normalized: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
        shared = self.mlp(guidance)
        return normalized * (1 + self.gamma(shared)) + self.beta(shared)


class MSFM(nn.Module):
    """Fuses the HED, depth and segmentation maps into features of ``channels`` channels."""

    def __init__(self, channels: int, config: ModulesConfig) -> None:
        super().__init__()
        self.region = RegionGuidance(config)
        self.norm = nn.GroupNorm(config.feature_norm_groups, channels, affine=False)
        self.edge_saft = SAFT(1, channels, config)
        self.region_saft = SAFT(config.guidance_channels, channels, config)
        self.residual = config.msfm_residual
        self.antialias = config.guidance_antialias
        self.out = nn.Conv2d(channels, channels, 1) if self.residual else None
        if self.out is not None:
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)

    def forward(
        self,
        features: torch.Tensor,
        hed: torch.Tensor,
        depth: torch.Tensor,
        seg: torch.Tensor,
    ) -> torch.Tensor:
        size, dtype = features.shape[-2:], features.dtype
        hed = self._smooth_resize(hed.to(dtype), size)
        depth = self._smooth_resize(depth.to(dtype), size)
        seg = F.interpolate(seg.to(dtype), size=size, mode="nearest-exact")
        normalized = self.norm(features)
        region = self.region(depth, seg)
        fused = self.edge_saft(normalized, hed) + self.region_saft(normalized, region)
        return features + self.out(fused) if self.out is not None else fused

    def _smooth_resize(self, x: torch.Tensor, size: torch.Size) -> torch.Tensor:
        if x.shape[-2:] == size:
            return x
        antialias = self.antialias and x.shape[-2] > size[0]
        return F.interpolate(
            x, size=size, mode="bilinear", align_corners=False, antialias=antialias
        )


def apply_msfm(module: Transformer2DModel, args: tuple, kwargs: dict[str, Any], output: Any) -> Any:
    """Forward hook of a transformer: run its ``msfm`` on the output when guidance is given.

    diffusers' blocks pass ``cross_attention_kwargs`` by keyword, so the maps are read from
    the same dict the attention processors read. diffusers checkpoints the transformer, not
    what follows it, so under gradient checkpointing the MSFM is checkpointed here with the
    transformer's own function.
    """
    conditions: MegaSRConditions | None = (kwargs.get("cross_attention_kwargs") or {}).get(
        CONDITIONS_KEY
    )
    if conditions is None or not conditions.has_guidance:
        return output
    features = output[0] if isinstance(output, tuple) else output.sample
    maps = (conditions.hed, conditions.depth, conditions.seg)
    if torch.is_grad_enabled() and module.gradient_checkpointing:
        fused = module._gradient_checkpointing_func(module.msfm, features, *maps)
    else:
        fused = module.msfm(features, *maps)
    if isinstance(output, tuple):
        return (fused, *output[1:])
    output.sample = fused
    return output
