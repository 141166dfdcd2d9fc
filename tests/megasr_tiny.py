"""Tiny MegaSR parts built in code, shared by the test_megasr_* files."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

import torch
from diffusers import ControlNetModel, UNet2DConditionModel

from megasr.model.megasr.adapter import is_adapter_key
from megasr.model.megasr.conditions import MegaSRConditions
from megasr.model.megasr.config import ModulesConfig
from megasr.model.megasr.denoiser import MegaSRDenoiser
from megasr.model.megasr.networks import (
    MEGASR_ARGUMENTS,
    MegaSRControlNetModel,
    MegaSRUNet2DConditionModel,
    diffusers_block,
)
from megasr.model.megasr.presets import TINY_CONTROLNET_EMBEDDING, TINY_MODULES, TINY_UNET

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


def plain_networks(seed: int = 0) -> tuple[UNet2DConditionModel, ControlNetModel]:
    """A tiny plain diffusers U-Net and its ControlNet, with the ControlNet's zero convs
    randomised so its residuals reach the U-Net (a fresh ControlNet adds exactly zero, which
    proves nothing)."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**TINY_UNET)
    controlnet = ControlNetModel.from_unet(
        unet, conditioning_embedding_out_channels=TINY_CONTROLNET_EMBEDDING
    )
    for name, param in controlnet.named_parameters():
        if name.startswith(("controlnet_down_blocks", "controlnet_mid_block")):
            torch.nn.init.normal_(param, std=0.1)
    return unet, controlnet


def tiny_denoiser(seed: int = 0, config: ModulesConfig = TINY, **placement: bool) -> MegaSRDenoiser:
    return denoiser_and_plain(seed, config, **placement)[0]


def denoiser_and_plain(
    seed: int = 0,
    config: ModulesConfig = TINY,
    unet_csm: bool = True,
    unet_msfm: bool = True,
    controlnet_csm: bool = True,
    controlnet_msfm: bool = True,
) -> tuple[MegaSRDenoiser, UNet2DConditionModel, ControlNetModel]:
    """A denoiser with ``config``'s modules where the flags put them, and the plain diffusers
    networks it was made from (the same weights)."""
    unet, controlnet = plain_networks(seed)
    denoiser = MegaSRDenoiser(
        MegaSRUNet2DConditionModel.from_plain(unet, config, unet_csm, unet_msfm),
        MegaSRControlNetModel.from_plain(controlnet, config, controlnet_csm, controlnet_msfm),
    )
    return denoiser, unet, controlnet


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
    unet: UNet2DConditionModel,
    controlnet: ControlNetModel,
    args: dict,
    conditioning_scale: float = 1.0,
) -> torch.Tensor:
    """U-Net + ControlNet as diffusers' ControlNet pipelines call them, without MegaSR."""
    common = {"encoder_hidden_states": args["text_embeddings"], "return_dict": False}
    down, mid = controlnet(
        args["latents"],
        args["timesteps"],
        controlnet_cond=args["control"],
        conditioning_scale=conditioning_scale,
        **common,
    )
    return unet(
        args["latents"],
        args["timesteps"],
        down_block_additional_residuals=down,
        mid_block_additional_residual=mid,
        **common,
    )[0]


def plain_copy(network: torch.nn.Module) -> torch.nn.Module:
    """The plain diffusers network of a MegaSR one: its architecture and pretrained weights,
    without the new modules."""
    plain_class = ControlNetModel if isinstance(network, ControlNetModel) else UNet2DConditionModel
    config = {k: v for k, v in network.config.items() if k not in MEGASR_ARGUMENTS}
    for key in ("down_block_types", "up_block_types"):
        if key in config:
            config[key] = tuple(diffusers_block(t) for t in config[key])
    config["mid_block_type"] = diffusers_block(config["mid_block_type"])
    plain = plain_class.from_config(config)
    base = {k: v for k, v in network.state_dict().items() if not is_adapter_key(k)}
    plain.load_state_dict(base)
    return plain.eval()


class PlainDenoiser(torch.nn.Module):
    """The base pipeline's noise predictor: plain diffusers U-Net + ControlNet, called like a
    :class:`MegaSRDenoiser` (the MegaSR conditions are ignored)."""

    def __init__(self, unet: UNet2DConditionModel, controlnet: ControlNetModel) -> None:
        super().__init__()
        self.unet, self.controlnet = unet, controlnet

    @classmethod
    def of(cls, denoiser: MegaSRDenoiser) -> PlainDenoiser:
        return cls(plain_copy(denoiser.unet), plain_copy(denoiser.controlnet))

    @property
    def latent_multiple(self) -> int:
        return 2 ** (len(self.unet.config.block_out_channels) - 1)

    def forward(self, latents, timesteps, text, control, conditions, conditioning_scale=1.0):
        args = {"latents": latents, "timesteps": timesteps, "text_embeddings": text}
        return plain_forward(
            self.unet, self.controlnet, {**args, "control": control}, conditioning_scale
        )
