"""The MegaSR noise predictor: a frozen SD U-Net steered by a ControlNet, both with CSM + MSFM.

This is the one module that training optimises and the pipeline samples with. It owns the
two networks and, when the Connector is shared, that Connector; everything the new modules
need arrives per call in a :class:`MegaSRConditions`.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from diffusers import ControlNetModel, UNet2DConditionModel
from torch import nn

from megasr.model.megasr.adapter import adapter_parameters, install_modules
from megasr.model.megasr.conditions import CONDITIONS_KEY, MegaSRConditions
from megasr.model.megasr.config import ModulesConfig


class MegaSRDenoiser(nn.Module):
    """Predicts the noise of latents given text embeddings, the LR image and the conditions."""

    def __init__(
        self, unet: UNet2DConditionModel, controlnet: ControlNetModel, config: ModulesConfig
    ) -> None:
        super().__init__()
        shared = config.connector == "shared"
        install_modules(
            unet, config, csm=config.csm_in_unet, msfm=config.msfm_in_unet, shared_connector=shared
        )
        install_modules(
            controlnet,
            config,
            csm=config.csm_in_controlnet,
            msfm=config.msfm_in_controlnet,
            shared_connector=shared,
        )
        self.unet = unet
        self.controlnet = controlnet
        self.config = config
        cross_dim = unet.config.cross_attention_dim
        self.connector = nn.Linear(config.clip_width, cross_dim) if shared else None

    @classmethod
    def from_unet(cls, unet: UNet2DConditionModel, config: ModulesConfig) -> MegaSRDenoiser:
        """A fresh model: the ControlNet copied from ``unet``, the new modules at identity.

        ``from_unet`` copies strictly, so it runs before anything is installed.
        """
        controlnet = ControlNetModel.from_unet(
            unet, conditioning_embedding_out_channels=config.controlnet_embedding_channels
        )
        return cls(unet, controlnet, config)

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
        is (B,); every tensor of ``conditions`` has batch B.
        """
        if self.connector is not None and conditions.image_tokens is not None:
            tokens = self.connector(conditions.image_tokens.to(self.connector.weight.dtype))
            conditions = replace(conditions, image_tokens=tokens)
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
        """model.md's trainable set: the whole ControlNet, the U-Net's CSMs and MSFMs, a shared
        Connector. Everything else (the U-Net backbone) is frozen."""
        params = {f"controlnet.{k}": p for k, p in self.controlnet.named_parameters()}
        params.update({f"unet.{k}": p for k, p in adapter_parameters(self.unet).items()})
        if self.connector is not None:
            params.update({f"connector.{k}": p for k, p in self.connector.named_parameters()})
        return params

    def set_trainable(self) -> None:
        """Freeze everything, then unfreeze exactly :meth:`trainable_parameters`."""
        self.requires_grad_(False)
        for param in self.trainable_parameters().values():
            param.requires_grad_(True)

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """The new modules of both networks (and a shared Connector), prefixed by owner."""
        state = {f"unet.{k}": p.detach() for k, p in adapter_parameters(self.unet).items()}
        state.update(
            {f"controlnet.{k}": p.detach() for k, p in adapter_parameters(self.controlnet).items()}
        )
        if self.connector is not None:
            state.update(
                {f"connector.{k}": p.detach() for k, p in self.connector.state_dict().items()}
            )
        return state

    def load_adapter_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load the new modules' weights; every adapter key must be present and known."""
        expected = self.adapter_state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if missing or unexpected:
            raise KeyError(
                f"adapter state does not fit this model: {len(missing)} missing "
                f"(first: {missing[:3]}), {len(unexpected)} unexpected (first: {unexpected[:3]})"
            )
        with torch.no_grad():
            for key, target in expected.items():
                if state[key].shape != target.shape:
                    shapes = f"{tuple(state[key].shape)} != {tuple(target.shape)}"
                    raise KeyError(f"adapter key {key}: shape {shapes}")
                target.copy_(state[key])
