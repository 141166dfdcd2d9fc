"""Sampling: restore whole images with MegaSR, tiled in latent space, many images at once.

Every image is one image, whatever its size (model.md, "Inference settings"): the pipeline
computes its tags, image tokens, guidance maps and their normalisation on the whole image
(:meth:`~megasr.model.megasr.pipeline.MegaSRPipeline.prepare`); here its start noise is drawn
once for the whole latent canvas from its generator, its denoiser tiles are blended with Gaussian
weights in latent space at every step, and the colour fix is applied to the whole result. A
tile's noise therefore depends on where the tile lies, and the same seed and input give the
same image whatever the tile size.

At every step, the latent tiles of all images in hand (each at its own timestep, with its
own prompt, tokens, maps and sampling options) are grouped by shape, guidance and the
conditions they carry, and stacked into forward passes, which is how the worker batches
across jobs. Everything an image needs lives on the
pipeline's device from preparation to the end: the control image, the maps, the tile weights,
the latents and the random generator, so a step moves nothing from the host. What does not
change from one step to the next for a fixed batch of tiles (their stacked control image,
prompts and maps, the MSFM modulation, the CSM keys and values) is computed at the first step
of that batch and reused (:class:`~megasr.model.megasr.conditions.StepCache`), within
``step_cache_mb``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers import AutoencoderKL
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor

from megasr.errors import InvalidParameterError
from megasr.model.engines.base import Cancelled
from megasr.model.megasr import vae as tiled_vae
from megasr.model.megasr.batches import HalvingBatches
from megasr.model.megasr.color_fix import color_fix
from megasr.model.megasr.conditions import MegaSRConditions, StepCache
from megasr.model.megasr.config import InferenceConfig
from megasr.model.megasr.denoiser import MegaSRDenoiser
from megasr.model.megasr.schedulers import make_scheduler
from megasr.model.megasr.tiling import LatentTiling, TileBlender
from megasr.model.tiler import reflect_pad

VAE_FACTOR = tiled_vae.VAE_FACTOR
MIB = 2**20


@dataclass
class ImageRequest:
    """One image to restore, with everything that belongs to it alone.

    ``lr_up`` is the bicubic-upscaled LR image (3, H, W) in [0, 1] at the output size.
    ``text`` and ``negative_text`` are (L, D) prompt embeddings (``negative_text`` is needed
    when the guidance scale is above 1). ``image_tokens`` (N, clip_width) and the guidance
    maps ``hed``, ``depth`` (1, H, W) and ``seg`` (3, H, W) switch on the CSM visual branch
    and the MSFM. ``seed`` seeds a generator on the pipeline's device, which draws the start
    noise and the sampler's noise: the same seed gives the same image on the same device.
    ``options`` are this image's sampling settings (None: the pipeline's defaults).
    ``generator``, when given, replaces the one ``seed`` would make (diffusers' convention:
    a generator on any device; the noise is drawn on it and moved to the sampler's device).
    """

    lr_up: torch.Tensor
    text: torch.Tensor
    seed: int
    negative_text: torch.Tensor | None = None
    image_tokens: torch.Tensor | None = None
    hed: torch.Tensor | None = None
    depth: torch.Tensor | None = None
    seg: torch.Tensor | None = None
    options: InferenceConfig | None = None
    on_step: Callable[[int, int], None] | None = None
    should_cancel: Callable[[], bool] | None = None
    generator: torch.Generator | None = None


@dataclass(eq=False)
class _Image:
    """An image being restored: its device-resident inputs and its sampling state."""

    request: ImageRequest
    options: InferenceConfig
    height: int
    width: int
    reference: torch.Tensor
    """The upscaled LR image (3, H, W), float32: what the colour fix matches."""
    control: torch.Tensor
    """The same, padded to the pipeline's multiple, (1, 3, PH, PW) in the denoiser's dtype."""
    conditions: MegaSRConditions
    """One row: image tokens and the padded maps in the denoiser's dtype."""
    text: torch.Tensor
    """(copies, L, D): the negative and the positive prompt under guidance, else the positive."""
    latents: torch.Tensor
    scheduler: SchedulerMixin
    generator: torch.Generator
    tiling: LatentTiling
    blender: TileBlender
    step: int = 0
    result: torch.Tensor | Cancelled | None = None
    model_input: torch.Tensor | None = None
    predictions: dict[int, torch.Tensor] = field(default_factory=dict)

    @property
    def guided(self) -> bool:
        return self.options.guidance_scale > 1.0

    @property
    def timesteps(self) -> torch.Tensor:
        return self.scheduler.timesteps

    @property
    def done(self) -> bool:
        return self.result is not None or self.step >= len(self.timesteps)

    def window(self, index: int, scale: int = 1) -> tuple[slice, slice]:
        """Tile ``index``'s rows and columns, in latents (``scale`` 1) or pixels (8)."""
        y, x = self.tiling.positions[index]
        th, tw = self.tiling.tile_height, self.tiling.tile_width
        return slice(y * scale, (y + th) * scale), slice(x * scale, (x + tw) * scale)


_TileKey = tuple[int, int]  # (image number, tile index)


@dataclass
class _Chunk:
    """The step-invariant inputs of one fixed batch of tiles, stacked once: the control image
    and the prompts with a row per copy (classifier-free guidance), the conditions with a row
    per tile, and each tile's guidance scale."""

    control: torch.Tensor
    text: torch.Tensor
    conditions: MegaSRConditions
    guidance: torch.Tensor
    conditioning_scale: float

    @property
    def nbytes(self) -> int:
        """Device memory the chunk holds: its stacked inputs and its step cache."""
        maps = (self.conditions.hed, self.conditions.depth, self.conditions.seg)
        held = sum(t.nbytes for t in (self.control, self.text, *maps) if t is not None)
        cache = self.conditions.cache
        return held + (0 if cache is None else cache.nbytes)


class TiledSampler:
    """MegaSR sampling on one device; ``options`` are the defaults a request may replace."""

    def __init__(
        self,
        denoiser: MegaSRDenoiser,
        vae: AutoencoderKL,
        scheduler_config: dict[str, Any],
        options: InferenceConfig,
    ) -> None:
        self.denoiser = denoiser
        self.vae = vae
        self.scheduler_config = dict(scheduler_config)
        self.options = options
        self.oom_retries = 0

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

    def encode(
        self, image: torch.Tensor, options: InferenceConfig | None = None, batch_size: int = 4
    ) -> torch.Tensor:
        """(3, H, W) in [0, 1] -> (4, H/8, W/8) scaled latents, tiled when large."""
        batches = HalvingBatches(batch_size, self.device)
        return tiled_vae.encode(self.vae, image, options or self.options, batches)

    def decode(
        self, latents: torch.Tensor, options: InferenceConfig | None = None, batch_size: int = 4
    ) -> torch.Tensor:
        """(4, h, w) scaled latents -> (3, 8h, 8w) image in [0, 1], tiled when large."""
        batches = HalvingBatches(batch_size, self.device)
        return tiled_vae.decode(self.vae, latents, options or self.options, batches)

    @torch.no_grad()
    def restore(
        self,
        requests: list[ImageRequest],
        batch_size: int = 4,
        on_batch: Callable[[int], None] | None = None,
    ) -> list[torch.Tensor | Cancelled]:
        """Restore every image; each result is (3, H, W) float32 in [0, 1] on the CPU, or the
        :class:`Cancelled` of an image whose ``should_cancel`` said so.

        ``batch_size`` is the number of tiles per forward pass (each runs twice under
        classifier-free guidance); it is halved for the rest of the call if the device runs
        out of memory. ``on_batch(n)`` is called after each forward pass of ``n`` tiles.
        """
        batches = HalvingBatches(batch_size, self.device)
        images = [self._prepare(request, batches) for request in requests]
        chunks: dict[tuple[_TileKey, ...], _Chunk] = {}
        try:
            while True:
                active = [image for image in images if not image.done]
                active = [image for image in active if not self._cancelled(image)]
                if not active:
                    break
                self._step(images, active, chunks, batches, on_batch)
                for image in active:
                    if image.done:
                        image.result = self._finish(image, batches)
        finally:
            self.oom_retries += batches.oom_retries
        return [image.result for image in images]

    def restore_one(self, request: ImageRequest, batch_size: int = 4) -> torch.Tensor:
        """One image; raises :class:`Cancelled` if it was cancelled."""
        (result,) = self.restore([request], batch_size)
        if isinstance(result, Cancelled):
            raise result
        return result

    # -- preparing an image -----------------------------------------------------------------

    def _prepare(self, request: ImageRequest, batches: HalvingBatches) -> _Image:
        options = request.options or self.options
        guided = options.guidance_scale > 1.0
        if guided and request.negative_text is None:
            raise InvalidParameterError("classifier-free guidance needs negative embeddings")
        device, dtype = self.device, self.dtype
        _, height, width = request.lr_up.shape
        m = self.pixel_multiple
        padded = (-(-height // m) * m, -(-width // m) * m)
        reference = request.lr_up.to(device, torch.float32)
        lr_up = reflect_pad(reference, *padded)
        latents_lr = tiled_vae.encode(self.vae, lr_up, options, batches)[None]
        generator = request.generator or torch.Generator(device).manual_seed(request.seed)
        scheduler = make_scheduler(options.sampler, self.scheduler_config)
        scheduler.set_timesteps(options.steps, device=device)
        noise = randn_tensor(latents_lr.shape, generator=generator, device=device)
        if options.start == "lr":
            latents = scheduler.add_noise(latents_lr, noise, scheduler.timesteps[:1])
        else:
            latents = noise * scheduler.init_noise_sigma
        tiling = LatentTiling.plan(
            padded[0] // VAE_FACTOR,
            padded[1] // VAE_FACTOR,
            options.latent_tile,
            options.latent_tile_overlap,
            options.tile_sigma,
            self.denoiser.latent_multiple,
        )
        texts = [request.negative_text, request.text] if guided else [request.text]
        return _Image(
            request=request,
            options=options,
            height=height,
            width=width,
            reference=reference,
            control=lr_up[None].to(dtype),
            conditions=self._conditions(request, padded),
            text=torch.stack(texts).to(device, dtype),
            latents=latents,
            scheduler=scheduler,
            generator=generator,
            tiling=tiling,
            blender=TileBlender(tiling, device),
        )

    def _conditions(self, request: ImageRequest, padded: tuple[int, int]) -> MegaSRConditions:
        device, dtype = self.device, self.dtype

        def resident(value: torch.Tensor | None, pad: bool) -> torch.Tensor | None:
            if value is None:
                return None
            value = value.to(device, dtype)
            return (reflect_pad(value, *padded) if pad else value)[None]

        return MegaSRConditions(
            image_tokens=resident(request.image_tokens, pad=False),
            hed=resident(request.hed, pad=True),
            depth=resident(request.depth, pad=True),
            seg=resident(request.seg, pad=True),
        )

    # -- one step of every image ------------------------------------------------------------

    def _step(
        self,
        images: list[_Image],
        active: list[_Image],
        chunks: dict[tuple[_TileKey, ...], _Chunk],
        batches: HalvingBatches,
        on_batch: Callable[[int], None] | None,
    ) -> None:
        """One denoising step of every active image: its tiles predicted in shape-grouped
        forward passes, blended, and its scheduler stepped."""
        number = {id(image): n for n, image in enumerate(images)}
        groups: dict[tuple, list[_TileKey]] = {}
        for image in active:
            t = image.timesteps[image.step]
            image.model_input = image.scheduler.scale_model_input(image.latents, t)
            image.predictions = {}
            shape = (image.tiling.tile_height, image.tiling.tile_width)
            key = (*shape, image.guided, image.options.conditioning_scale)
            key += image.conditions.present  # tiles with and without a condition run apart
            n = number[id(image)]
            groups.setdefault(key, []).extend((n, i) for i in range(len(image.tiling)))
        used: set[tuple[_TileKey, ...]] = set()

        def predict(tiles: list[_TileKey]) -> list[None]:
            key = tuple(tiles)
            used.add(key)
            chunk = chunks.get(key) or self._chunk(images, tiles)
            if self._budget:
                chunks[key] = chunk
            self._predict(images, tiles, chunk)
            if chunk.conditions.cache is not None:
                self._keep_within_budget(chunks, chunk)
            if on_batch is not None:
                on_batch(len(tiles))
            return [None] * len(tiles)

        for tiles in groups.values():
            batches.map(predict, tiles)
        for stale in set(chunks) - used:
            del chunks[stale]
        for image in active:
            self._advance(image)

    def _chunk(self, images: list[_Image], tiles: list[_TileKey]) -> _Chunk:
        """Stack the step-invariant inputs of ``tiles`` (a fixed batch of tiles)."""
        members = [(images[n], index) for n, index in tiles]
        copies = members[0][0].text.shape[0]
        rows = []
        for image, index in members:
            ys, xs = image.window(index, VAE_FACTOR)
            rows.append(
                image.conditions.map(lambda t, ys=ys, xs=xs: t[..., ys, xs] if t.ndim == 4 else t)
            )
        conditions = MegaSRConditions.cat(rows)
        conditions.cache = StepCache() if self._budget else None
        guidance = torch.tensor(
            [image.options.guidance_scale for image, _ in members], device=self.device
        )
        control = torch.cat(
            [image.control[(..., *image.window(index, VAE_FACTOR))] for image, index in members]
        )
        return _Chunk(
            control=control.repeat(copies, 1, 1, 1),
            # Copy-major, as the latents: every tile's first prompt, then every tile's second.
            text=torch.cat(
                [torch.stack([image.text[c] for image, _ in members]) for c in range(copies)]
            ),
            conditions=conditions,
            guidance=guidance.view(-1, 1, 1, 1),
            conditioning_scale=members[0][0].options.conditioning_scale,
        )

    @property
    def _budget(self) -> int:
        """Bytes the step-invariant inputs and caches of all batches of tiles may hold."""
        return self.options.step_cache_mb * MIB

    def _predict(self, images: list[_Image], tiles: list[_TileKey], chunk: _Chunk) -> None:
        """The guided noise prediction of each tile, kept in its image for blending."""
        members = [(images[n], index) for n, index in tiles]
        copies = chunk.text.shape[0] // len(members)
        # The chunk's inputs are the very tensors of every step; only the latents are new.
        latents = torch.cat(
            [image.model_input[(..., *image.window(index))] for image, index in members]
        )
        timesteps = torch.stack([image.timesteps[image.step] for image, _ in members])
        noise = self.denoiser(
            latents.repeat(copies, 1, 1, 1).to(self.dtype),
            timesteps.repeat(copies),
            chunk.text,
            chunk.control,
            chunk.conditions,
            chunk.conditioning_scale,
        ).float()
        if copies == 2:
            uncond, cond = noise.chunk(2)
            noise = uncond + chunk.guidance * (cond - uncond)
        for (image, index), prediction in zip(members, noise, strict=True):
            image.predictions[index] = prediction

    def _keep_within_budget(
        self, chunks: dict[tuple[_TileKey, ...], _Chunk], chunk: _Chunk
    ) -> None:
        """Drop ``chunk``'s step cache for good if all chunks together pass the budget: its
        tiles then recompute that work at every step."""
        if sum(c.nbytes for c in chunks.values()) > self._budget:
            chunk.conditions.cache = None

    def _advance(self, image: _Image) -> None:
        noise = image.blender.blend([image.predictions[i] for i in range(len(image.tiling))])
        t = image.timesteps[image.step]
        step = image.scheduler.step(noise[None], t, image.latents, generator=image.generator)
        image.latents = step.prev_sample
        image.predictions = {}
        image.model_input = None
        image.step += 1
        if image.request.on_step is not None:
            image.request.on_step(image.step, len(image.timesteps))

    # -- finishing --------------------------------------------------------------------------

    def _finish(self, image: _Image, batches: HalvingBatches) -> torch.Tensor:
        pixels = tiled_vae.decode(self.vae, image.latents[0], image.options, batches)
        pixels = pixels[:, : image.height, : image.width]
        fixed = color_fix(pixels[None], image.reference[None], image.options.color_fix)[0]
        return fixed.cpu().contiguous()

    @staticmethod
    def _cancelled(image: _Image) -> bool:
        request = image.request
        if request.should_cancel is not None and request.should_cancel():
            image.result = Cancelled("the image was cancelled before it was finished")
            return True
        return False
