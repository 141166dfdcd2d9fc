"""A loaded MegaSR model: the denoiser and every frozen part the pipeline needs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from transformers import CLIPTextModel, CLIPTokenizer

from megasr.model.extractors import Extractors, tiny_clip_tokenizer, tiny_extractors
from megasr.model.megasr.config import InferenceConfig, MegaSRConfig
from megasr.model.megasr.denoiser import MegaSRDenoiser
from megasr.model.megasr.networks import MegaSRUNet2DConditionModel
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
    def prepare(self, inputs: Sequence[RestoreInput]) -> list[ImageRequest]:
        """The requests that restore ``inputs``, with every condition of each whole image.

        Each LR image is upscaled bicubically to its output size; the guidance maps come from
        the upscaled image, the CLIP tokens and tags from the LR image, all images of the call
        through each extractor together (one CLIP pass gives both tokens and tags); every
        prompt and negative prompt goes through the text encoder in one batch. The results
        stay on the model's device.
        """
        device = next(self.text_encoder.parameters()).device
        defaults = self.config.inference
        options = [given.options or defaults for given in inputs]
        lrs = [given.lr.float().clamp(0.0, 1.0).to(device) for given in inputs]
        lr_ups = [_bicubic(lr, given.size) for lr, given in zip(lrs, inputs, strict=True)]
        maps = self.extractors.guidance_each(lr_ups)
        tokens, tags = self.extractors.semantics(lrs)
        prompts = [
            compose_prompt(tag, given.prompt, option.added_prompt)
            for tag, given, option in zip(tags, inputs, options, strict=True)
        ]
        negatives = [
            option.negative_prompt if given.negative_prompt is None else given.negative_prompt
            for given, option in zip(inputs, options, strict=True)
        ]
        text = PromptEncoder(self.tokenizer, self.text_encoder)([*prompts, *negatives])
        count = len(inputs)
        return [
            ImageRequest(
                lr_up=lr_ups[i],
                text=text[i],
                negative_text=text[count + i],
                seed=defaults.seed if given.seed is None else given.seed,
                image_tokens=tokens[i],
                hed=maps[i].hed,
                depth=maps[i].depth,
                seg=maps[i].seg,
                options=given.options,
            )
            for i, given in enumerate(inputs)
        ]

    def pipeline(self) -> MegaSRPipeline:
        return MegaSRPipeline(self.denoiser, self.vae, self.scheduler_config, self.config.inference)


def _bicubic(lr: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``x_lr_up``: the LR image (3, h, w) upscaled bicubically to ``size``, in [0, 1]."""
    up = F.interpolate(lr[None], size=size, mode="bicubic", align_corners=False)
    return up[0].clamp(0.0, 1.0)


@dataclass(frozen=True)
class RestoreInput:
    """One image as a caller asks for it.

    ``lr`` (3, h, w) in [0, 1]; ``size`` the output (height, width); the user's prompt and
    negative prompt (None: the checkpoint's) and seed (None: the checkpoint's); ``options``
    this image's sampling settings (None: the pipeline's defaults, the checkpoint's).
    """

    lr: torch.Tensor
    size: tuple[int, int]
    prompt: str = ""
    negative_prompt: str | None = None
    seed: int | None = None
    options: InferenceConfig | None = None


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
        denoiser=MegaSRDenoiser.from_unet(MegaSRUNet2DConditionModel(**TINY_UNET), modules),
        vae=AutoencoderKL(**TINY_VAE),
        text_encoder=tiny_text_encoder(tokenizer),
        tokenizer=tokenizer,
        scheduler_config=dict(SD_SCHEDULER, _class_name="DDPMScheduler"),
        extractors=extractors,
    )
