"""The MegaSR noise predictor: a frozen SD U-Net steered by a ControlNet, both with CSM + MSFM.

This is the one module that training optimises and the sampler calls. It owns nothing of its
own: it calls the pipeline's two MegaSR networks the way diffusers' ControlNet pipelines call
theirs, with MegaSR's conditions in ``cross_attention_kwargs``
(:data:`~megasr.model.megasr.conditions.CONDITIONS_KEY`), and names the trainable set.
"""

from __future__ import annotations

import torch
from torch import nn

from megasr.model.megasr.adapter import adapter_parameters
from megasr.model.megasr.conditions import CONDITIONS_KEY, MegaSRConditions
from megasr.model.megasr.config import ModulesConfig
from megasr.model.megasr.networks import MegaSRControlNetModel, MegaSRUNet2DConditionModel


class MegaSRDenoiser(nn.Module):
    """Predicts the noise of latents given text embeddings, the LR image and the conditions."""

    def __init__(self, unet: MegaSRUNet2DConditionModel, controlnet: MegaSRControlNetModel) -> None:
        super().__init__()
        if not isinstance(unet, MegaSRUNet2DConditionModel) or not isinstance(
            controlnet, MegaSRControlNetModel
        ):
            raise TypeError(
                "MegaSRDenoiser takes a MegaSRUNet2DConditionModel and a MegaSRControlNetModel "
                f"(got {type(unet).__name__}, {type(controlnet).__name__})"
            )
        if unet.config.clip_width != controlnet.config.clip_width:
            raise ValueError(
                f"the U-Net takes image tokens of width {unet.config.clip_width}, the "
                f"ControlNet {controlnet.config.clip_width}"
            )
        self.unet = unet
        self.controlnet = controlnet

    @classmethod
    def from_unet(
        cls,
        unet: MegaSRUNet2DConditionModel,
        conditioning_embedding_out_channels: tuple[int, ...] = (16, 32, 96, 256),
    ) -> MegaSRDenoiser:
        """A fresh model: the ControlNet copied from ``unet``, its new modules at identity."""
        controlnet = MegaSRControlNetModel.from_unet(
            unet, conditioning_embedding_out_channels=conditioning_embedding_out_channels
        )
        return cls(unet, controlnet)

    @property
    def modules_config(self) -> ModulesConfig:
        return self.unet.modules_config

    @property
    def latent_multiple(self) -> int:
        """Latent sides must be multiples of this (the U-Net's total downsampling)."""
        return 2 ** (len(self.unet.config.block_out_channels) - 1)

    def forward(
        self,
        latents: torch.Tensor,
        timesteps: torch.Tensor,
        text_embeddings: torch.Tensor,
        control: torch.Tensor,
        conditions: MegaSRConditions,
        conditioning_scale: float = 1.0,
    ) -> torch.Tensor:
        """Noise (or v) prediction for ``latents`` (B, 4, h, w).

        ``control`` is the bicubic-upscaled LR image (B, 3, 8h, 8w) in [0, 1]; ``timesteps``
        is (B,); the tensors of ``conditions`` have B rows or B / k rows for latents that hold
        k copies of the same tiles (classifier-free guidance, see :mod:`.conditions`).
        """
        kwargs = {CONDITIONS_KEY: conditions}
        down, mid = self.controlnet(
            latents,
            timesteps,
            encoder_hidden_states=text_embeddings,
            controlnet_cond=control,
            conditioning_scale=conditioning_scale,
            cross_attention_kwargs=kwargs,
            return_dict=False,
        )
        return self.unet(
            latents,
            timesteps,
            encoder_hidden_states=text_embeddings,
            down_block_additional_residuals=down,
            mid_block_additional_residual=mid,
            cross_attention_kwargs=kwargs,
            return_dict=False,
        )[0]

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        """model.md's trainable set: the whole ControlNet, the U-Net's CSMs, MSFMs and shared
        Connector. Everything else (the U-Net backbone) is frozen."""
        params = {f"controlnet.{k}": p for k, p in self.controlnet.named_parameters()}
        params.update({f"unet.{k}": p for k, p in adapter_parameters(self.unet).items()})
        return params

    def set_trainable(self) -> None:
        """Freeze everything, then unfreeze exactly :meth:`trainable_parameters`."""
        self.requires_grad_(False)
        for param in self.trainable_parameters().values():
            param.requires_grad_(True)
