"""Sampling: restore images with MegaSR, tile by tile, many images per forward pass.

The unit of work is a latent tile (:class:`TileRequest`): tiles of the same shape are
stacked into one forward pass whatever image they come from, each with its own text
embeddings, image tokens, guidance maps and LR conditioning, so the worker can batch across
jobs. :meth:`MegaSRPipeline.restore` drives whole images: VAE-encode the bicubic-upscaled LR
image, start from it noised to the first timestep, and at every step predict the noise of
every tile of every image, blend each image's tiles with Gaussian weights and step its own
scheduler with its own generator; then VAE-decode and colour-correct.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers import AutoencoderKL
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from megasr.errors import InvalidParameterError
from megasr.model.megasr.color_fix import color_fix
from megasr.model.megasr.conditions import MegaSRConditions
from megasr.model.megasr.config import InferenceConfig
from megasr.model.megasr.denoiser import MegaSRDenoiser
from megasr.model.megasr.prompts import PromptEncoder
from megasr.model.megasr.schedulers import make_scheduler
from megasr.model.megasr.tiling import LatentTiling, blend_tiles, map_tiled
from megasr.model.tiler import reflect_pad

VAE_FACTOR = 8


class Cancelled(Exception):
    """The caller asked to stop an image; checked before every denoising step."""


@dataclass
class ImageRequest:
    """One image to restore, with everything that belongs to it alone.

    ``lr_up`` is the bicubic-upscaled LR image (3, H, W) in [0, 1] at the output size.
    ``text`` and ``negative_text`` are (L, D) prompt embeddings (``negative_text`` is needed
    when the guidance scale is above 1). ``image_tokens`` (N, clip_width) and the guidance
    maps ``hed``, ``depth`` (1, H, W) and ``seg`` (3, H, W) switch on the CSM visual branch
    and the MSFM. ``generator`` (a CPU generator, so a seed means the same noise on every
    device) draws the start noise and the sampler's noise.
    """

    lr_up: torch.Tensor
    text: torch.Tensor
    generator: torch.Generator
    negative_text: torch.Tensor | None = None
    image_tokens: torch.Tensor | None = None
    hed: torch.Tensor | None = None
    depth: torch.Tensor | None = None
    seg: torch.Tensor | None = None
    on_step: Callable[[int, int], None] | None = None
    should_cancel: Callable[[], bool] | None = None


@dataclass
class TileRequest:
    """One latent tile of one image at one timestep, with that image's conditions.

    ``latents`` (4, h, w); ``control`` (3, 8h, 8w) in [0, 1]; ``conditions`` with batch 1
    (guidance maps cropped to the tile); ``text``/``negative_text`` (L, D).
    """

    latents: torch.Tensor
    timestep: torch.Tensor
    control: torch.Tensor
    text: torch.Tensor
    conditions: MegaSRConditions
    negative_text: torch.Tensor | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.latents.shape)


@dataclass
class _ImageState:
    request: ImageRequest
    height: int
    width: int
    lr_up: torch.Tensor
    conditions: MegaSRConditions
    latents: torch.Tensor
    scheduler: SchedulerMixin
    tiling: LatentTiling
    result: torch.Tensor | Cancelled | None = None
    predictions: list[torch.Tensor] = field(default_factory=list)


class MegaSRPipeline:
    """MegaSR sampling on one device; ``options`` are the defaults a call may replace."""

    def __init__(
        self,
        denoiser: MegaSRDenoiser,
        vae: AutoencoderKL,
        prompt_encoder: PromptEncoder,
        scheduler_config: dict[str, Any],
        options: InferenceConfig,
    ) -> None:
        self.denoiser = denoiser
        self.vae = vae
        self.prompt_encoder = prompt_encoder
        self.scheduler_config = dict(scheduler_config)
        self.options = options

    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.denoiser.parameters()).dtype

    @property
    def pixel_multiple(self) -> int:
        """Image sides are padded to this internally (VAE factor times U-Net downsampling)."""
        return VAE_FACTOR * self.denoiser.latent_multiple

    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        return self.prompt_encoder(prompts)

    @torch.no_grad()
    def encode(self, image: torch.Tensor, options: InferenceConfig | None = None) -> torch.Tensor:
        """(3, H, W) in [0, 1] -> (4, H/8, W/8) scaled latents (the posterior mean), tiled when
        larger than the VAE tile."""
        options = options or self.options
        tiling = self._vae_tiling(
            image.shape[-2] // VAE_FACTOR, image.shape[-1] // VAE_FACTOR, options
        )
        x = image.to(self.device, self.vae.dtype) * 2 - 1

        def encode_batch(batch: torch.Tensor) -> torch.Tensor:
            return self.vae.encode(batch).latent_dist.mode() * self.vae.config.scaling_factor

        if len(tiling) == 1:
            return encode_batch(x[None])[0].float()
        return map_tiled(encode_batch, x, tiling, VAE_FACTOR, 1, batch_size=1)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, options: InferenceConfig | None = None) -> torch.Tensor:
        """(4, h, w) scaled latents -> (3, 8h, 8w) image in [0, 1], tiled when large."""
        options = options or self.options
        tiling = self._vae_tiling(latents.shape[-2], latents.shape[-1], options)
        z = latents.to(self.device, self.vae.dtype) / self.vae.config.scaling_factor

        def decode_batch(batch: torch.Tensor) -> torch.Tensor:
            return self.vae.decode(batch).sample

        if len(tiling) == 1:
            pixels = decode_batch(z[None])[0].float()
        else:
            pixels = map_tiled(decode_batch, z, tiling, 1, VAE_FACTOR, batch_size=1)
        return ((pixels + 1) / 2).clamp(0.0, 1.0)

    @torch.no_grad()
    def predict_tiles(
        self, tiles: list[TileRequest], options: InferenceConfig | None = None
    ) -> list[torch.Tensor]:
        """Guided noise predictions (float32, (4, h, w)) for same-shape tiles of any images."""
        options = options or self.options
        if len({tile.shape for tile in tiles}) != 1:
            raise ValueError("tiles batched in one forward pass must share a shape")
        guided = options.guidance_scale > 1.0
        dtype, device = self.dtype, self.device
        text = torch.stack([tile.text for tile in tiles])
        if guided:
            if any(tile.negative_text is None for tile in tiles):
                raise InvalidParameterError("classifier-free guidance needs negative embeddings")
            text = torch.cat([torch.stack([tile.negative_text for tile in tiles]), text])
        copies = 2 if guided else 1
        latents = torch.stack([tile.latents for tile in tiles]).repeat(copies, 1, 1, 1)
        timesteps = torch.stack([tile.timestep for tile in tiles]).repeat(copies)
        control = torch.stack([tile.control for tile in tiles]).repeat(copies, 1, 1, 1)
        conditions = MegaSRConditions.cat([tile.conditions for tile in tiles])
        conditions = conditions.map(
            lambda t: t.to(device, dtype).repeat(copies, *[1] * (t.ndim - 1))
        )
        noise = self.denoiser(
            latents.to(device, dtype),
            timesteps.to(device),
            text.to(device, dtype),
            control.to(device, dtype),
            conditions,
            options.conditioning_scale,
        ).float()
        if guided:
            uncond, cond = noise.chunk(2)
            noise = uncond + options.guidance_scale * (cond - uncond)
        return list(noise)

    @torch.no_grad()
    def restore(
        self,
        requests: list[ImageRequest],
        options: InferenceConfig | None = None,
        batch_size: int = 4,
    ) -> list[torch.Tensor | Cancelled]:
        """Restore every image; each result is (3, H, W) float32 in [0, 1] on the CPU, or the
        :class:`Cancelled` of an image whose ``should_cancel`` said so.

        ``batch_size`` is the number of tiles per forward pass (each runs twice under
        classifier-free guidance).
        """
        options = options or self.options
        if not requests:
            return []
        states = [self._prepare(request, options) for request in requests]
        timesteps = states[0].scheduler.timesteps
        for index, t in enumerate(timesteps):
            active = [s for s in states if not self._cancelled(s)]
            if not active:
                break
            self._step(active, t, options, batch_size)
            for state in active:
                if state.request.on_step is not None:
                    state.request.on_step(index + 1, len(timesteps))
        for state in states:
            if state.result is None:
                state.result = self._finish(state, options)
        return [state.result for state in states]

    def restore_one(
        self, request: ImageRequest, options: InferenceConfig | None = None, batch_size: int = 4
    ) -> torch.Tensor:
        """One image; raises :class:`Cancelled` if it was cancelled."""
        (result,) = self.restore([request], options, batch_size)
        if isinstance(result, Cancelled):
            raise result
        return result

    def _prepare(self, request: ImageRequest, options: InferenceConfig) -> _ImageState:
        _, height, width = request.lr_up.shape
        m = self.pixel_multiple
        ph, pw = -(-height // m) * m, -(-width // m) * m
        lr_up = reflect_pad(request.lr_up.float().cpu(), ph, pw)
        maps = {
            name: None if value is None else reflect_pad(value.float().cpu(), ph, pw)[None]
            for name, value in (
                ("hed", request.hed),
                ("depth", request.depth),
                ("seg", request.seg),
            )
        }
        tokens = None if request.image_tokens is None else request.image_tokens[None]
        z_lr = self.encode(lr_up, options)
        scheduler = make_scheduler(options.sampler, self.scheduler_config)
        scheduler.set_timesteps(options.steps, device=self.device)
        noise = torch.randn(z_lr.shape, generator=request.generator).to(z_lr.device)
        if options.start == "lr":
            latents = scheduler.add_noise(z_lr[None], noise[None], scheduler.timesteps[:1])
        else:
            latents = noise[None] * scheduler.init_noise_sigma
        tiling = LatentTiling.plan(
            ph // VAE_FACTOR,
            pw // VAE_FACTOR,
            options.latent_tile,
            options.latent_tile_overlap,
            options.tile_sigma,
            self.denoiser.latent_multiple,
        )
        return _ImageState(
            request=request,
            height=height,
            width=width,
            lr_up=lr_up,
            conditions=MegaSRConditions(image_tokens=tokens, **maps),
            latents=latents,
            scheduler=scheduler,
            tiling=tiling,
        )

    def _step(
        self, states: list[_ImageState], t: torch.Tensor, options: InferenceConfig, batch_size: int
    ) -> None:
        """One denoising step of every image: all tiles predicted in shape-grouped batches."""
        by_shape: dict[tuple[int, ...], list[tuple[_ImageState, TileRequest]]] = defaultdict(list)
        for state in states:
            state.predictions = []
            model_input = state.scheduler.scale_model_input(state.latents, t)[0]
            for y, x in state.tiling.positions:
                tile = self._tile(state, model_input, t, y, x)
                by_shape[tile.shape].append((state, tile))
        for group in by_shape.values():
            for first in range(0, len(group), batch_size):
                chunk = group[first : first + batch_size]
                noise = self.predict_tiles([tile for _, tile in chunk], options)
                for (state, _), prediction in zip(chunk, noise, strict=True):
                    state.predictions.append(prediction)
        for state in states:
            noise = blend_tiles(state.tiling, state.predictions)[None].to(state.latents.device)
            step = state.scheduler.step(noise, t, state.latents, generator=state.request.generator)
            state.latents = step.prev_sample
            state.predictions = []

    def _tile(
        self, state: _ImageState, model_input: torch.Tensor, t: torch.Tensor, y: int, x: int
    ) -> TileRequest:
        th, tw = state.tiling.tile_height, state.tiling.tile_width
        f = VAE_FACTOR
        pixels = (slice(None), slice(y * f, (y + th) * f), slice(x * f, (x + tw) * f))
        conditions = state.conditions
        crop = MegaSRConditions(
            image_tokens=conditions.image_tokens,
            hed=None if conditions.hed is None else conditions.hed[(slice(None), *pixels)],
            depth=None if conditions.depth is None else conditions.depth[(slice(None), *pixels)],
            seg=None if conditions.seg is None else conditions.seg[(slice(None), *pixels)],
        )
        return TileRequest(
            latents=model_input[:, y : y + th, x : x + tw],
            timestep=t,
            control=state.lr_up[pixels],
            text=state.request.text,
            negative_text=state.request.negative_text,
            conditions=crop,
        )

    def _finish(self, state: _ImageState, options: InferenceConfig) -> torch.Tensor:
        image = self.decode(state.latents[0], options).cpu()
        image = color_fix(image[None], state.lr_up[None], options.color_fix)[0]
        return image[:, : state.height, : state.width].contiguous()

    @staticmethod
    def _cancelled(state: _ImageState) -> bool:
        if state.result is not None:
            return True
        request = state.request
        if request.should_cancel is not None and request.should_cancel():
            state.result = Cancelled("the image was cancelled before it was finished")
            return True
        return False

    def _vae_tiling(self, height: int, width: int, options: InferenceConfig) -> LatentTiling:
        return LatentTiling.plan(
            height, width, options.vae_tile, options.vae_tile_overlap, options.tile_sigma
        )
