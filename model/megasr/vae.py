"""The VAE over whole images of any size: one pass when it fits a tile, else blended tiles.

A tiled VAE has two failure modes. Seams: tiles overlap and are blended with Gaussian weights
(:mod:`.tiling`). Drift: every GroupNorm of the VAE normalises with the statistics of what
it sees, so each tile comes out with its own brightness, contrast and colour cast. With
``vae_shared_norm`` (the default) the VAE first runs once on the whole image, shrunk to
``vae_norm_view`` latents when it is larger, records every GroupNorm's per-group mean and
variance, and then normalises every tile with those whole-image statistics, so all tiles
share one normalisation, as they would in a single pass over the whole image. Up to the view
size the statistics are exact; above it the shrunk view is smoother than the image, so
fine-scale variance is somewhat underestimated, but equally for every tile, which is what
removes the drift. (A view one tile large was tried first: on the tiny test VAE its
statistics were far enough off to make tiles worse than without sharing.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from torch import nn

from megasr.model.megasr.batches import HalvingBatches
from megasr.model.megasr.config import InferenceConfig
from megasr.model.megasr.tiling import LatentTiling, map_tiled

VAE_FACTOR = 8

GroupStats = dict[nn.GroupNorm, tuple[torch.Tensor, torch.Tensor]]


@torch.no_grad()
def encode(
    vae: AutoencoderKL, image: torch.Tensor, options: InferenceConfig, batches: HalvingBatches
) -> torch.Tensor:
    """(3, H, W) in [0, 1] -> (4, H/8, W/8) scaled latents (the posterior mean), float32."""
    tiling = vae_tiling(image.shape[-2] // VAE_FACTOR, image.shape[-1] // VAE_FACTOR, options)
    x = image.to(vae.device, vae.dtype)[None] * 2 - 1

    def run(batch: torch.Tensor) -> torch.Tensor:
        return vae.encode(batch).latent_dist.mode() * vae.config.scaling_factor

    if len(tiling) == 1:
        return run(x)[0].float()
    reference = _shrunk(x, options.vae_norm_view * VAE_FACTOR)
    with _norm_of(vae.encoder, lambda: run(reference), options.vae_shared_norm):
        return map_tiled(run, x[0], tiling, VAE_FACTOR, 1, batches)


@torch.no_grad()
def decode(
    vae: AutoencoderKL, latents: torch.Tensor, options: InferenceConfig, batches: HalvingBatches
) -> torch.Tensor:
    """(4, h, w) scaled latents -> (3, 8h, 8w) image in [0, 1], float32."""
    tiling = vae_tiling(latents.shape[-2], latents.shape[-1], options)
    z = latents.to(vae.device, vae.dtype)[None] / vae.config.scaling_factor

    def run(batch: torch.Tensor) -> torch.Tensor:
        return vae.decode(batch).sample

    if len(tiling) == 1:
        pixels = run(z)[0].float()
    else:
        reference = _shrunk(z, options.vae_norm_view)
        with _norm_of(vae.decoder, lambda: run(reference), options.vae_shared_norm):
            pixels = map_tiled(run, z[0], tiling, 1, VAE_FACTOR, batches)
    return ((pixels + 1) / 2).clamp(0.0, 1.0)


def vae_tiling(height: int, width: int, options: InferenceConfig) -> LatentTiling:
    """The VAE's tiles over a latent of ``height`` x ``width``."""
    return LatentTiling.plan(
        height, width, options.vae_tile, options.vae_tile_overlap, options.tile_sigma
    )


def _shrunk(x: torch.Tensor, side: int) -> torch.Tensor:
    """``x`` (1, C, H, W) area-averaged to fit ``side`` x ``side``, aspect kept."""
    height, width = x.shape[-2:]
    factor = max(height, width) / side
    if factor <= 1:
        return x
    size = (max(1, round(height / factor)), max(1, round(width / factor)))
    return F.interpolate(x.float(), size=size, mode="area").to(x.dtype)


@contextmanager
def _norm_of(net: nn.Module, reference: Callable[[], object], shared: bool) -> Iterator[None]:
    """While open, every GroupNorm of ``net`` uses the statistics it saw in ``reference()``."""
    if not shared:
        yield
        return
    norms = [m for m in net.modules() if isinstance(m, nn.GroupNorm)]
    stats: GroupStats = {}

    def record(module: nn.GroupNorm, args: tuple, output: torch.Tensor) -> None:
        stats[module] = _group_stats(args[0], module.num_groups)

    handles = [norm.register_forward_hook(record) for norm in norms]
    try:
        reference()
    finally:
        for handle in handles:
            handle.remove()

    def normalise(module: nn.GroupNorm, args: tuple, output: torch.Tensor) -> torch.Tensor:
        return _normalised(args[0], module, *stats[module])

    handles = [norm.register_forward_hook(normalise) for norm in norms]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _group_stats(x: torch.Tensor, groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group mean and variance over the whole of one image (B = 1), float32."""
    grouped = x.float().reshape(x.shape[0], groups, -1)
    return grouped.mean(-1, keepdim=True), grouped.var(-1, unbiased=False, keepdim=True)


def _normalised(
    x: torch.Tensor, norm: nn.GroupNorm, mean: torch.Tensor, var: torch.Tensor
) -> torch.Tensor:
    """GroupNorm of ``x`` with given statistics, then the module's own affine transform."""
    grouped = x.float().reshape(x.shape[0], norm.num_groups, -1)
    y = ((grouped - mean) * torch.rsqrt(var + norm.eps)).reshape(x.shape)
    if norm.affine:
        shape = (1, -1) + (1,) * (x.ndim - 2)
        y = y * norm.weight.float().view(shape) + norm.bias.float().view(shape)
    return y.to(x.dtype)
