"""MSFM, the Multimodal Signal Fusion Module, applied after every transformer block.

Stage 1 turns depth and segmentation into region guidance ``G_r``; stage 2 modulates the
parameter-free normalised features twice (SAFT from the HED edges ``G_h`` and from ``G_r``)
and sums the two. The module adds ``ZeroConv1x1(F_h + F_r)`` to the block's output, so a
fresh MSFM passes the pretrained features through unchanged. Most of that work depends on the
maps alone and so is the same at every denoising step (:class:`Modulation`).

The module is a submodule ``msfm`` of the transformer it modulates
(:class:`~megasr.model.megasr.transformer.MegaSRTransformer2DModel`), which applies it to its
output; the pretrained keys of the transformer stay exactly as they were.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from megasr.model.megasr.conditions import copies_of
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
    """Spatially adaptive feature transform: ``F_n * (1 + gamma(S)) + beta(S)``, ``S = MLP(G)``.

    :meth:`modulation` returns ``(gamma, beta)``; they depend on the guidance alone.
    """

    def __init__(self, guidance_channels: int, channels: int, config: ModulesConfig) -> None:
        super().__init__()
        hidden, kernel = config.saft_hidden, config.saft_kernel_size
        self.mlp = nn.Sequential(nn.Conv2d(guidance_channels, hidden, 3, padding=1), nn.SiLU())
        self.gamma = nn.Conv2d(hidden, channels, kernel, padding=kernel // 2)
        self.beta = nn.Conv2d(hidden, channels, kernel, padding=kernel // 2)

    def modulation(self, guidance: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shared = self.mlp(guidance)
        return self.gamma(shared), self.beta(shared)


class Modulation(NamedTuple):
    """What the guidance makes of one block's features: ``fused = F_n * scale + shift``.

    With the residual output, ``shift`` has already been through the zero-initialised 1x1
    convolution (weight and bias), and the block returns ``F + W (F_n * scale) + shift``.
    One row per tile; the features may hold several copies of those rows.
    """

    scale: torch.Tensor
    shift: torch.Tensor


class MSFM(nn.Module):
    """Fuses the HED, depth and segmentation maps into features of ``channels`` channels.

    The two SAFT outputs sum to ``F_n * (2 + gamma_h + gamma_r) + (beta_h + beta_r)``, and the
    1x1 output convolution is linear, so everything the maps decide (stage 1, both SAFT
    MLPs and their gamma and beta convolutions, the convolution of the summed beta) is one
    :class:`Modulation` computed by :meth:`modulation`; only the normalisation, one
    multiply-add and one 1x1 convolution per call depend on the features (:meth:`modulate`).
    A sampler computes the modulation once per batch of tiles and applies it at every step.
    """

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
        return self.modulate(features, self.modulation(hed, depth, seg, features))

    def modulation(
        self, hed: torch.Tensor, depth: torch.Tensor, seg: torch.Tensor, like: torch.Tensor
    ) -> Modulation:
        """The maps' modulation of features shaped and typed ``like`` (any number of rows)."""
        size, dtype = like.shape[-2:], like.dtype
        hed = self._smooth_resize(hed.to(dtype), size)
        depth = self._smooth_resize(depth.to(dtype), size)
        seg = F.interpolate(seg.to(dtype), size=size, mode="nearest-exact")
        edge_gamma, edge_beta = self.edge_saft.modulation(hed)
        region_gamma, region_beta = self.region_saft.modulation(self.region(depth, seg))
        scale, shift = 2 + edge_gamma + region_gamma, edge_beta + region_beta
        if self.out is not None:
            shift = self.out(shift)
        return Modulation(scale, shift)

    def modulate(self, features: torch.Tensor, modulation: Modulation) -> torch.Tensor:
        """The block's output from its features and the maps' :class:`Modulation`."""
        scale, shift = modulation
        copies = copies_of(features.shape[0], scale.shape[0])
        normalized = self.norm(features)
        fused = _per_copy(normalized, copies) * scale
        if self.out is None:
            return (fused + shift).flatten(0, 1)
        mixed = F.conv2d(fused.flatten(0, 1), self.out.weight)
        return features + (_per_copy(mixed, copies) + shift).flatten(0, 1)

    def _smooth_resize(self, x: torch.Tensor, size: torch.Size) -> torch.Tensor:
        if x.shape[-2:] == size:
            return x
        antialias = self.antialias and x.shape[-2] > size[0]
        # In float32: antialiased resizing has no bfloat16 kernel on the CPU.
        resized = F.interpolate(
            x.float(), size=size, mode="bilinear", align_corners=False, antialias=antialias
        )
        return resized.to(x.dtype)


def _per_copy(x: torch.Tensor, copies: int) -> torch.Tensor:
    """(copies * B, ...) -> (copies, B, ...), so per-tile tensors broadcast over the copies."""
    return x.view(copies, x.shape[0] // copies, *x.shape[1:])
