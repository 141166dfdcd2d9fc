"""A loaded MegaSR model: the denoiser and every frozen part the pipeline needs."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from megasr.model.extractors import Extractors, tiny_clip_tokenizer, tiny_extractors
from megasr.model.megasr.config import MegaSRConfig
from megasr.model.megasr.denoiser import MegaSRDenoiser
from megasr.model.megasr.pipeline import ImageRequest, MegaSRPipeline
from megasr.model.megasr.presets import (
    SD_SCHEDULER,
    TINY_MODULES,
    TINY_UNET,
    TINY_VAE,
    tiny_text_encoder,
)
from megasr.model.megasr.prompts import PromptEncoder, compose_prompt


@dataclass
class MegaSRModel:
    """Everything a checkpoint holds, in memory."""

    config: MegaSRConfig
    denoiser: MegaSRDenoiser
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    scheduler_config: dict[str, Any]
    extractors: Extractors

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> MegaSRModel:
        # dtype only when given: diffusers warns about any explicit dtype, None included.
        cast = {"device": device} if dtype is None else {"device": device, "dtype": dtype}
        for module in (self.denoiser, self.vae, self.text_encoder, self.extractors):
            module.to(**cast)
        return self

    def freeze(self) -> MegaSRModel:
        """Inference mode: every part in eval and without gradients."""
        for module in (self.denoiser, self.vae, self.text_encoder, self.extractors):
            module.eval().requires_grad_(False)
        return self

    @torch.no_grad()
    def prepare(
        self,
        lr: torch.Tensor,
        size: tuple[int, int],
        prompt: str = "",
        seed: int | None = None,
        negative_prompt: str | None = None,
    ) -> ImageRequest:
        """One LR image (3, h, w) in [0, 1] -> the request to restore it at ``size`` (H, W).

        Upscales bicubically, runs the extractors (maps on the upscaled image, CLIP tokens
        and tags on the LR image) and encodes the tagged prompt and the negative prompt.
        """
        options = self.config.inference
        device = next(self.text_encoder.parameters()).device
        lr = lr.float().clamp(0.0, 1.0)[None].to(device)
        lr_up = F.interpolate(lr, size=size, mode="bicubic", align_corners=False).clamp(0.0, 1.0)
        maps = self.extractors.guidance(lr_up)
        full_prompt = compose_prompt(self.extractors.tags(lr)[0], prompt, options.added_prompt)
        negative = options.negative_prompt if negative_prompt is None else negative_prompt
        text = PromptEncoder(self.tokenizer, self.text_encoder)([full_prompt, negative])
        return ImageRequest(
            lr_up=lr_up[0],
            text=text[0],
            negative_text=text[1],
            generator=torch.Generator().manual_seed(options.seed if seed is None else seed),
            image_tokens=self.extractors.image_tokens(lr)[0],
            hed=maps.hed[0],
            depth=maps.depth[0],
            seg=maps.seg[0],
        )

    def pipeline(self) -> MegaSRPipeline:
        return MegaSRPipeline(
            self.denoiser,
            self.vae,
            PromptEncoder(self.tokenizer, self.text_encoder),
            self.scheduler_config,
            self.config.inference,
        )


def build_tiny_model(seed: int = 0) -> MegaSRModel:
    """Tiny random weights for every component, the same for the same seed; no downloads.

    The tiny preset samples with 4 steps by default so smoke runs of the service stay quick;
    everything else keeps the full model's defaults.
    """
    extractors = tiny_extractors(seed)
    torch.manual_seed(seed)
    tokenizer = tiny_clip_tokenizer()
    modules = replace(TINY_MODULES, clip_width=extractors.clip_width)
    config = MegaSRConfig(
        preset="tiny",
        modules=modules,
        inference=replace(MegaSRConfig().inference, steps=4),
        sources={"preset": "tiny", "seed": str(seed)},
    )
    return MegaSRModel(
        config=config,
        denoiser=MegaSRDenoiser.from_unet(UNet2DConditionModel(**TINY_UNET), modules),
        vae=AutoencoderKL(**TINY_VAE),
        text_encoder=tiny_text_encoder(tokenizer),
        tokenizer=tokenizer,
        scheduler_config=dict(SD_SCHEDULER, _class_name="DDPMScheduler"),
        extractors=extractors,
    )
