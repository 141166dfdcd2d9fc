"""The ``megasr`` engine: MegaSR diffusion behind the image-engine interface.

MegaSR sees each image whole. The engine runs the diffusers pipeline of the checkpoint
(:class:`~megasr.model.megasr.pipeline.MegaSRPipeline`): it upscales the LR image
bicubically straight to the size the request asks for (model.md, data flow step 1), computes
the conditions of the whole image, and samples it tiled in latent space.
Images of one call are restored together: at each step their latent tiles share forward
passes, however their sizes, prompts, seeds, step counts, guidance scales and colour fixes
differ. What a request leaves out is the checkpoint's inference default.

``settings.tile`` (0 = the checkpoint's ``latent_tile``) is the denoiser's tile side in
output pixels, rounded down to what the U-Net needs (64 px for SD-2); ``max_batch_tiles``
is the number of latent tiles per forward pass.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import get_args

import torch

from megasr.errors import EngineError, InvalidParameterError
from megasr.model.engines.base import Cancelled, GenerationOptions, ImageEngine, ImageTask
from megasr.model.megasr.checkpoint import latent_multiple, load_checkpoint, read_config
from megasr.model.megasr.config import ColorFix, InferenceConfig
from megasr.model.megasr.pipeline import MegaSRPipeline, RestoreInput
from megasr.model.megasr.sampling import VAE_FACTOR
from megasr.model.megasr.tiling import LatentTiling
from megasr.settings import Settings

SCALE = 4


class MegaSREngine(ImageEngine):
    """MegaSR from a checkpoint directory (see docs/megasr-checkpoint.md)."""

    name = "megasr"
    native_scale = SCALE

    def __init__(self, checkpoint_dir: Path, settings: Settings) -> None:
        self.checkpoint_dir = Path(checkpoint_dir)
        self.settings = settings
        config = read_config(self.checkpoint_dir)
        self._latent_multiple = latent_multiple(self.checkpoint_dir)
        self.defaults = self._with_tile(config.inference)
        self._pipeline: MegaSRPipeline | None = None

    @property
    def oom_retries(self) -> int:
        return 0 if self._pipeline is None else self._pipeline.sampler.oom_retries

    def load(self, device: torch.device, dtype: torch.dtype | None = None) -> None:
        if dtype is None:
            dtype = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
        self._pipeline = load_checkpoint(self.checkpoint_dir, device, dtype)
        self._pipeline.sampler.options = self.defaults

    def warmup(self) -> None:
        side = 16
        self.restore(
            [ImageTask(torch.zeros(3, side, side), (side, side), GenerationOptions(steps=1))]
        )

    @torch.no_grad()
    def restore(
        self, tasks: Sequence[ImageTask], on_batch: Callable[[int], None] | None = None
    ) -> list[torch.Tensor | Cancelled]:
        if self._pipeline is None:
            raise EngineError("the megasr engine is not loaded")
        inputs = [
            RestoreInput(
                lr=task.pixels,
                size=task.size,
                prompt=task.options.prompt or "",
                negative_prompt=task.options.negative_prompt,
                seed=task.options.seed,
                options=self.sampling(task.options),
            )
            for task in tasks
        ]
        requests = self._pipeline.prepare(inputs)
        for request, task in zip(requests, tasks, strict=True):
            request.on_step, request.should_cancel = task.on_progress, task.should_cancel
        return self._pipeline.restore(requests, self.settings.max_batch_tiles, on_batch)

    def tiles_per_step(self, height: int, width: int) -> int:
        multiple = VAE_FACTOR * self._latent_multiple
        tiling = LatentTiling.plan(
            -(-height // multiple) * multiple // VAE_FACTOR,
            -(-width // multiple) * multiple // VAE_FACTOR,
            self.defaults.latent_tile,
            self.defaults.latent_tile_overlap,
            self.defaults.tile_sigma,
            self._latent_multiple,
        )
        return len(tiling)

    def sampling(self, option: GenerationOptions) -> InferenceConfig:
        """One image's sampling settings: the defaults with what the request replaces."""
        if option.color_fix is not None and option.color_fix not in get_args(ColorFix):
            choices = ", ".join(get_args(ColorFix))
            raise InvalidParameterError(
                f"unknown color_fix {option.color_fix!r}; choose one of {choices}"
            )
        defaults = self.defaults
        return replace(
            defaults,
            steps=defaults.steps if option.steps is None else option.steps,
            guidance_scale=(
                defaults.guidance_scale if option.guidance_scale is None else option.guidance_scale
            ),
            color_fix=defaults.color_fix if option.color_fix is None else option.color_fix,
        )

    def _with_tile(self, options: InferenceConfig) -> InferenceConfig:
        """The checkpoint's defaults with ``settings.tile`` (output pixels) as the latent tile,
        and the VAE tile no larger than it, so a VAE tile never splits a denoiser tile."""
        if not self.settings.tile:
            return options
        multiple = self._latent_multiple
        tile = max(multiple, self.settings.tile // VAE_FACTOR // multiple * multiple)
        return replace(
            options,
            latent_tile=tile,
            latent_tile_overlap=min(options.latent_tile_overlap, tile // 2),
            vae_tile=tile,
            vae_tile_overlap=min(options.vae_tile_overlap, tile // 2),
        )
