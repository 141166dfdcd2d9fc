"""Tiny MegaSR parts built in code, shared by the test_megasr_* files."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

import torch

from megasr.model.megasr.conditions import MegaSRConditions
from megasr.model.megasr.config import ModulesConfig
from megasr.model.megasr.denoiser import MegaSRDenoiser
from megasr.model.megasr.networks import MegaSRControlNetModel, MegaSRUNet2DConditionModel
from megasr.model.megasr.presets import TINY_MODULES, TINY_UNET

CLIP_WIDTH = 24
TOKENS = 17
TINY = replace(TINY_MODULES, clip_width=CLIP_WIDTH)


@contextmanager
def one_thread() -> Iterator[None]:
    """Tiny ops are dominated by thread hand-offs; one thread keeps them fast on busy CPUs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def plain_networks(seed: int = 0) -> tuple[MegaSRUNet2DConditionModel, MegaSRControlNetModel]:
    """A tiny U-Net and its ControlNet, nothing installed yet, with the ControlNet's zero
    convs randomised so its residuals reach the U-Net (a fresh ControlNet adds exactly zero,
    which proves nothing)."""
    torch.manual_seed(seed)
    unet = MegaSRUNet2DConditionModel(**TINY_UNET)
    controlnet = MegaSRControlNetModel.from_unet(
        unet, conditioning_embedding_out_channels=TINY.controlnet_embedding_channels
    )
    for name, param in controlnet.named_parameters():
        if name.startswith(("controlnet_down_blocks", "controlnet_mid_block")):
            torch.nn.init.normal_(param, std=0.1)
    return unet, controlnet


def tiny_denoiser(seed: int = 0, config: ModulesConfig = TINY) -> MegaSRDenoiser:
    unet, controlnet = plain_networks(seed)
    return MegaSRDenoiser(unet, controlnet, config)


def denoiser_and_plain(
    seed: int = 0,
) -> tuple[MegaSRDenoiser, MegaSRUNet2DConditionModel, MegaSRControlNetModel]:
    return denoiser_and_plain_with(TINY, seed)


def denoiser_and_plain_with(
    config: ModulesConfig, seed: int = 0
) -> tuple[MegaSRDenoiser, MegaSRUNet2DConditionModel, MegaSRControlNetModel]:
    """A denoiser with ``config``'s modules, and untouched copies of its two networks."""
    unet, controlnet = plain_networks(seed)
    plain = copy.deepcopy(unet), copy.deepcopy(controlnet)
    return MegaSRDenoiser(unet, controlnet, config), *plain


def randomise_new_modules(denoiser: MegaSRDenoiser, std: float = 0.2) -> None:
    """Move every zero-initialised LGWAM and MSFM weight off zero."""
    with torch.no_grad():
        for name, param in denoiser.named_parameters():
            if ".lgwam." in name or ".msfm." in name:
                param.add_(torch.randn_like(param) * std)


def inputs(batch: int, height: int, width: int, seed: int = 0) -> dict:
    """Random forward inputs for latents of ``height`` x ``width``."""
    g = torch.Generator().manual_seed(seed)
    ph, pw = height * 8, width * 8
    return {
        "latents": torch.randn(batch, 4, height, width, generator=g),
        "timesteps": torch.randint(0, 1000, (batch,), generator=g),
        "text_embeddings": torch.randn(batch, 77, TINY_UNET["cross_attention_dim"], generator=g),
        "control": torch.rand(batch, 3, ph, pw, generator=g),
        "conditions": MegaSRConditions(
            image_tokens=torch.randn(batch, TOKENS, CLIP_WIDTH, generator=g),
            hed=torch.rand(batch, 1, ph, pw, generator=g),
            depth=torch.rand(batch, 1, ph, pw, generator=g),
            seg=torch.rand(batch, 3, ph, pw, generator=g),
        ),
    }


def plain_forward(
    unet: MegaSRUNet2DConditionModel, controlnet: MegaSRControlNetModel, args: dict
) -> torch.Tensor:
    """U-Net + ControlNet as diffusers' ControlNet pipelines call them, without MegaSR."""
    common = {"encoder_hidden_states": args["text_embeddings"], "return_dict": False}
    down, mid = controlnet(
        args["latents"], args["timesteps"], controlnet_cond=args["control"], **common
    )
    return unet(
        args["latents"],
        args["timesteps"],
        down_block_additional_residuals=down,
        mid_block_additional_residual=mid,
        **common,
    )[0]
