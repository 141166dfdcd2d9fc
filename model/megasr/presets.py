"""Architectures built in code: SD-2-base at full size and a tiny one of every component.

The full-size configurations let the GPU benchmark and the parameter-count test build the
real model shape without downloads; the tiny ones make a whole checkpoint (U-Net, VAE, text
encoder and tokenizer; the extractors bring their own tiny set) that runs in milliseconds on
a CPU, for tests and smoke runs of the service. ``TINY_MODULES.clip_width`` is replaced by
the tiny CLIP's width when a tiny model is built.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from typing import Any

import torch
from diffusers import AutoencoderKL, DDPMScheduler
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from megasr.model.extractors import tiny_clip_tokenizer, tiny_extractors
from megasr.model.megasr.config import InferenceConfig, ModulesConfig
from megasr.model.megasr.denoiser import MegaSRDenoiser
from megasr.model.megasr.extractor_component import MegaSRExtractors
from megasr.model.megasr.networks import MegaSRControlNetModel, MegaSRUNet2DConditionModel
from megasr.model.megasr.pipeline import MegaSRPipeline

SD_SCHEDULER: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
}

SD2_BASE_UNET: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "attention_head_dim": (5, 10, 20, 20),
    "cross_attention_dim": 1024,
    "use_linear_projection": True,
    "norm_num_groups": 32,
}

SD2_BASE_MODULES = ModulesConfig(clip_width=1024)
"""CLIP ViT-L/14 vision width, the tower SeeSR-family models take image tokens from."""

TINY_UNET: dict[str, Any] = {
    "sample_size": 16,
    "in_channels": 4,
    "out_channels": 4,
    # Attention at a quarter of the latent resolution (a sixteenth of the tokens): a smoke
    # run's whole-image tile then attends over 30x40 tokens for a 1280x960 output.
    "down_block_types": ("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    "block_out_channels": (8, 16, 32),
    "layers_per_block": 1,
    "attention_head_dim": 8,
    "cross_attention_dim": 32,
    "use_linear_projection": True,
    "norm_num_groups": 8,
}

TINY_MODULES = ModulesConfig(
    guidance_channels=16,
    guidance_norm_groups=4,
    saft_hidden=16,
    feature_norm_groups=8,
)
TINY_CONTROLNET_EMBEDDING = (4, 4, 8, 8)
"""Channels of the tiny ControlNet's conditioning encoder (three stride-2 steps)."""

TINY_VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (4, 8, 8, 8),
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 4,
    "sample_size": 64,
    # No attention in the VAE's middle block: at the latent resolution of a whole image it
    # cost most of a smoke run (one 1280x960 output: 19,200 tokens attending to each other).
    "mid_block_add_attention": False,
}


TINY_INFERENCE = InferenceConfig(
    steps=4, latent_tile=160, latent_tile_overlap=32, vae_tile=160, vae_tile_overlap=32
)
"""The tiny preset's sampling defaults: few steps, and tiles that take a 1280 px output
whole (the tiny U-Net attends at a quarter of the latent resolution, so one tile is cheap; tiles
that overlap redo the overlap), so smoke runs of the service stay quick (docs/benchmarks.md,
"MegaSR tiny preset")."""


def tiny_text_encoder(tokenizer: CLIPTokenizer) -> CLIPTextModel:
    """A two-layer CLIP text encoder sized to ``tokenizer``'s vocabulary."""
    eos = tokenizer.convert_tokens_to_ids(tokenizer.eos_token)
    config = CLIPTextConfig(
        hidden_size=TINY_UNET["cross_attention_dim"],
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=tokenizer.model_max_length,
        vocab_size=len(tokenizer),
        projection_dim=32,
        bos_token_id=tokenizer.convert_tokens_to_ids(tokenizer.bos_token),
        eos_token_id=eos,
        pad_token_id=eos,
    )
    return CLIPTextModel(config)


def sd2_base_denoiser(modules: ModulesConfig = SD2_BASE_MODULES) -> MegaSRDenoiser:
    """Full-size MegaSR (SD-2-base U-Net, its ControlNet, CSM + MSFM) with random weights.

    Built on whatever device is current, so ``with torch.device("meta")`` sizes it for free.
    """
    unet = MegaSRUNet2DConditionModel.from_plain_config(SD2_BASE_UNET, modules)
    return MegaSRDenoiser.from_unet(unet)


def build_tiny_pipeline(seed: int = 0) -> MegaSRPipeline:
    """Tiny random weights for every component, the same for the same seed; no downloads.

    The tiny preset samples with 4 steps by default so smoke runs of the service stay quick;
    everything else keeps the full model's defaults.
    """
    extractors = tiny_extractors(seed)
    torch.manual_seed(seed)
    tokenizer = tiny_clip_tokenizer()
    modules = replace(TINY_MODULES, clip_width=extractors.clip_width)
    unet = MegaSRUNet2DConditionModel.from_plain_config(TINY_UNET, modules)
    controlnet = MegaSRControlNetModel.from_unet(
        unet, conditioning_embedding_out_channels=TINY_CONTROLNET_EMBEDDING
    )
    return MegaSRPipeline(
        vae=AutoencoderKL(**TINY_VAE),
        text_encoder=tiny_text_encoder(tokenizer),
        tokenizer=tokenizer,
        unet=unet,
        controlnet=controlnet,
        scheduler=DDPMScheduler.from_config(SD_SCHEDULER),
        extractors=MegaSRExtractors.of(extractors),
        inference=asdict(TINY_INFERENCE),
        preset="tiny",
        sources={"preset": "tiny", "seed": str(seed)},
    )
