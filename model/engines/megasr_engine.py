"""The ``megasr`` engine: MegaSR diffusion behind the engine interface.

The upscaler hands the engine fixed-size LR tiles; each tile is restored as an image of its
own (bicubic x4, guidance maps, CLIP tokens and tags of that tile, the full sampling loop),
and the upscaler blends the tiles back. A tile's output is one latent tile of the pipeline
(96 latents = 768 px by default), so inside a tile nothing is blended; tiles of one call are
batched through every denoising step together.

The engine is conditional: each tile comes with its request's
:class:`~megasr.model.engines.base.GenerationOptions`. Prompt, negative prompt and seed are a
tile's own (its text embeddings and its generator), so tiles of jobs that differ in them share
a call. Steps, guidance scale and colour fix set the sampling loop that every tile of a call
goes through together, so a call's tiles must agree on them (the worker's batch key groups by
them). What a request leaves out is the checkpoint's inference default.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import get_args

import torch

from megasr.errors import EngineError, InvalidParameterError
from megasr.model.engines.base import Engine, GenerationOptions, TileSpec
from megasr.model.megasr.checkpoint import latent_multiple, load_checkpoint, read_config
from megasr.model.megasr.components import MegaSRModel
from megasr.model.megasr.config import ColorFix, InferenceConfig
from megasr.model.megasr.pipeline import VAE_FACTOR, MegaSRPipeline
from megasr.settings import Settings

SCALE = 4


class MegaSREngine(Engine):
    """MegaSR from a checkpoint directory (see docs/megasr-checkpoint.md)."""

    name = "megasr"
    native_scale = SCALE
    conditional = True

    def __init__(self, checkpoint_dir: Path, settings: Settings) -> None:
        self.checkpoint_dir = Path(checkpoint_dir)
        self.settings = settings
        self.config = read_config(self.checkpoint_dir)
        self._latent_multiple = latent_multiple(self.checkpoint_dir)
        self._model: MegaSRModel | None = None
        self._pipeline: MegaSRPipeline | None = None

    def load(self, device: torch.device, dtype: torch.dtype | None = None) -> None:
        if dtype is None:
            dtype = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
        self._model = load_checkpoint(self.checkpoint_dir, device, dtype)
        self._pipeline = self._model.pipeline()

    @property
    def tile_spec(self) -> TileSpec:
        """One latent tile of output, in LR pixels; sides a multiple of the model's need."""
        options = self.config.inference
        per_latent = VAE_FACTOR // SCALE
        multiple = VAE_FACTOR * self._latent_multiple // SCALE
        size = self.settings.tile or options.latent_tile * per_latent
        size = max(multiple, size // multiple * multiple)
        overlap = min(options.latent_tile_overlap * per_latent, size // 2)
        return TileSpec(size=size, overlap=overlap, multiple=multiple)

    @torch.no_grad()
    def run(
        self, tiles: torch.Tensor, options: Sequence[GenerationOptions] | None = None
    ) -> torch.Tensor:
        if self._model is None or self._pipeline is None:
            raise EngineError("the megasr engine is not loaded")
        if options is None:
            options = [GenerationOptions()] * len(tiles)
        if len(options) != len(tiles):
            raise ValueError(f"{len(options)} generation options for {len(tiles)} tiles")
        sampling = self._sampling(options)
        _, _, height, width = tiles.shape
        size = (height * SCALE, width * SCALE)
        requests = [
            self._model.prepare(
                tile, size, option.prompt or "", option.seed, option.negative_prompt
            )
            for tile, option in zip(tiles, options, strict=True)
        ]
        return torch.stack(self._pipeline.restore(requests, sampling, batch_size=len(requests)))

    def _sampling(self, options: Sequence[GenerationOptions]) -> InferenceConfig:
        """The one sampling configuration of a call: the checkpoint's defaults with the
        requested steps, guidance scale and colour fix, which every tile must share."""
        configs = {self._sampling_of(option) for option in options}
        if len(configs) > 1:
            asked = sorted({(o.steps, o.guidance_scale, o.color_fix) for o in options}, key=str)
            raise ValueError(
                "tiles in one megasr call must share steps, guidance_scale and color_fix; "
                f"got {asked}"
            )
        return configs.pop()

    def _sampling_of(self, option: GenerationOptions) -> InferenceConfig:
        if option.color_fix is not None and option.color_fix not in get_args(ColorFix):
            choices = ", ".join(get_args(ColorFix))
            raise InvalidParameterError(
                f"unknown color_fix {option.color_fix!r}; choose one of {choices}"
            )
        defaults = self.config.inference
        return replace(
            defaults,
            steps=defaults.steps if option.steps is None else option.steps,
            guidance_scale=(
                defaults.guidance_scale if option.guidance_scale is None else option.guidance_scale
            ),
            color_fix=defaults.color_fix if option.color_fix is None else option.color_fix,
        )
