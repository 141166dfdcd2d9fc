"""The MegaSR noise predictor: a frozen SD U-Net steered by a ControlNet, both with CSM + MSFM.

This is the one module that training optimises and the pipeline samples with. It owns the
two networks and, when the Connector is shared, that Connector; everything the new modules
need arrives per call in a :class:`MegaSRConditions`.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from megasr.errors import EngineError
from megasr.model.megasr.adapter import adapter_parameters
from megasr.model.megasr.conditions import CONDITIONS_KEY, MegaSRConditions
from megasr.model.megasr.config import ModulesConfig
from megasr.model.megasr.networks import (
    Installation,
    MegaSRControlNetModel,
    MegaSRUNet2DConditionModel,
)


class MegaSRDenoiser(nn.Module):
    """Predicts the noise of latents given text embeddings, the LR image and the conditions."""

    def __init__(
        self,
        unet: MegaSRUNet2DConditionModel,
        controlnet: MegaSRControlNetModel,
        config: ModulesConfig,
    ) -> None:
        """Install the new modules where ``config`` puts them; a ControlNet loaded whole (with
        its modules) must carry exactly the installation ``config`` asks for."""
        super().__init__()
        if not isinstance(unet, MegaSRUNet2DConditionModel) or not isinstance(
            controlnet, MegaSRControlNetModel
        ):
            raise TypeError(
                "MegaSRDenoiser takes a MegaSRUNet2DConditionModel and a MegaSRControlNetModel "
                f"(got {type(unet).__name__}, {type(controlnet).__name__})"
            )
        unet.install_megasr(Installation(config, config.csm_in_unet, config.msfm_in_unet))
        wanted = Installation(config, config.csm_in_controlnet, config.msfm_in_controlnet)
        if controlnet.installation is None:
            controlnet.install_megasr(wanted)
        elif controlnet.installation != wanted:
            raise EngineError(
                "the ControlNet's MegaSR modules do not match the checkpoint config "
                f"({controlnet.installation} != {wanted})"
            )
        self.unet = unet
        self.controlnet = controlnet
        self.config = config
        cross_dim = unet.config.cross_attention_dim
        shared = config.connector == "shared"
        self.connector = nn.Linear(config.clip_width, cross_dim) if shared else None

    @classmethod
    def from_unet(cls, unet: MegaSRUNet2DConditionModel, config: ModulesConfig) -> MegaSRDenoiser:
        """A fresh model: the ControlNet copied from ``unet``, the new modules at identity.

        ``from_unet`` copies strictly, so it runs before anything is installed.
        """
        controlnet = MegaSRControlNetModel.from_unet(
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
        is (B,); the tensors of ``conditions`` have B rows or B / k rows for latents that hold
        k copies of the same tiles (classifier-free guidance, see :mod:`.conditions`).
        """
        if self.connector is not None and conditions.image_tokens is not None:
            conditions = replace(conditions, image_tokens=self._connect(conditions))
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

    def _connect(self, conditions: MegaSRConditions) -> torch.Tensor:
        """The shared Connector's image tokens (once per batch of tiles with a step cache)."""

        def connect() -> torch.Tensor:
            return self.connector(conditions.image_tokens.to(self.connector.weight.dtype))

        cache = conditions.cache
        return connect() if cache is None else cache.get(self.connector, connect)

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

    def load_adapter_state_dict(
        self,
        state: dict[str, torch.Tensor],
        owners: tuple[str, ...] = ("unet.", "controlnet.", "connector."),
    ) -> None:
        """Load the new modules' weights of the ``owners`` (key prefixes) the state holds;
        every adapter key of theirs must be present and known."""
        expected = {k: v for k, v in self.adapter_state_dict().items() if k.startswith(owners)}
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
