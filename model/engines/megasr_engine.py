"""The ``megasr`` engine: MegaSR diffusion behind the engine interface.

The upscaler hands the engine fixed-size LR tiles; each tile is restored as an image of its
own (bicubic x4, guidance maps, CLIP tokens and tags of that tile, the full sampling loop
with the checkpoint's inference defaults and a fixed seed), and the upscaler blends the
tiles back. A tile's output is one latent tile of the pipeline (96 latents = 768 px by
default), so inside a tile nothing is blended; tiles of one call are batched through every
denoising step together. Per-request options (prompt, steps, seed, ...) and cross-job
batching are the worker's, through :class:`~megasr.model.megasr.pipeline.MegaSRPipeline`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from megasr.errors import EngineError
from megasr.model.engines.base import Engine, TileSpec
from megasr.model.megasr.checkpoint import latent_multiple, load_checkpoint, read_config
from megasr.model.megasr.components import MegaSRModel
from megasr.model.megasr.pipeline import VAE_FACTOR, MegaSRPipeline
from megasr.settings import Settings

SCALE = 4


class MegaSREngine(Engine):
    """MegaSR from a checkpoint directory (see docs/megasr-checkpoint.md)."""

    name = "megasr"
    native_scale = SCALE

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
    def run(self, tiles: torch.Tensor) -> torch.Tensor:
        if self._model is None or self._pipeline is None:
            raise EngineError("the megasr engine is not loaded")
        _, _, height, width = tiles.shape
        size = (height * SCALE, width * SCALE)
        requests = [self._model.prepare(tile, size) for tile in tiles]
        return torch.stack(self._pipeline.restore(requests, batch_size=len(requests)))
