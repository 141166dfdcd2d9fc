"""The transformer of a MegaSR attention block: diffusers' ``Transformer2DModel`` carrying its
CSMs (as the cross-attention of each of its transformer blocks) and its MSFM.

MegaSR's conditions arrive in ``cross_attention_kwargs`` under one key
(:data:`~megasr.model.megasr.conditions.CONDITIONS_KEY`), the channel diffusers hands
unchanged to every transformer of a U-Net or ControlNet. The transformer takes them out
(so no attention processor ever sees them), gives its CSMs the image tokens inside
``encoder_hidden_states`` (:class:`~megasr.model.megasr.csm.CSMContext`) and applies its MSFM
to its own output when guidance maps are given.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.models.transformers.transformer_2d import (
    Transformer2DModel,
    Transformer2DModelOutput,
)

from megasr.model.megasr.conditions import CONDITIONS_KEY, MegaSRConditions
from megasr.model.megasr.config import ModulesConfig
from megasr.model.megasr.csm import CSMAttention, CSMContext
from megasr.model.megasr.msfm import MSFM


class MegaSRTransformer2DModel(Transformer2DModel):
    """A ``Transformer2DModel`` with a CSM in every transformer block (``csm``) and an MSFM
    after its output (``msfm``); the pretrained keys are those of the plain transformer."""

    @classmethod
    def like(
        cls, transformer: Transformer2DModel, modules: ModulesConfig, csm: bool, msfm: bool
    ) -> MegaSRTransformer2DModel:
        """A MegaSR transformer with the architecture of ``transformer`` (fresh weights)."""
        megasr = cls(**{k: v for k, v in transformer.config.items() if not k.startswith("_")})
        if csm:
            for block in megasr.transformer_blocks:
                block.attn2 = CSMAttention.like(block.attn2, modules)
        megasr.register_module("msfm", MSFM(megasr.out_channels, modules) if msfm else None)
        return megasr

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        timestep: torch.LongTensor | None = None,
        added_cond_kwargs: dict[str, torch.Tensor] | None = None,
        class_labels: torch.LongTensor | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        attention_mask: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> Transformer2DModelOutput | tuple[torch.Tensor]:
        kwargs = dict(cross_attention_kwargs or {})
        conditions: MegaSRConditions | None = kwargs.pop(CONDITIONS_KEY, None)
        tokens = None if conditions is None else conditions.image_tokens
        if tokens is not None and isinstance(self.transformer_blocks[0].attn2, CSMAttention):
            encoder_hidden_states = CSMContext(encoder_hidden_states, tokens, conditions.cache)
        output = super().forward(
            hidden_states,
            encoder_hidden_states=encoder_hidden_states,
            timestep=timestep,
            added_cond_kwargs=added_cond_kwargs,
            class_labels=class_labels,
            cross_attention_kwargs=kwargs or None,
            attention_mask=attention_mask,
            encoder_attention_mask=encoder_attention_mask,
            return_dict=return_dict,
        )
        if self.msfm is None or conditions is None or not conditions.has_guidance:
            return output
        features = output.sample if return_dict else output[0]
        fused = self._modulate(features, conditions)
        if return_dict:
            return Transformer2DModelOutput(sample=fused)
        return (fused, *output[1:])

    def _modulate(self, features: torch.Tensor, conditions: MegaSRConditions) -> torch.Tensor:
        """The MSFM on ``features``: its modulation from the step cache when there is one
        (computed at the first step); under gradient checkpointing, recomputed in backward
        with the transformer's own checkpointing function (diffusers checkpoints the
        transformer blocks, not what follows them)."""
        msfm: MSFM = self.msfm
        maps = (conditions.hed, conditions.depth, conditions.seg)
        if conditions.cache is not None:
            modulation = conditions.cache.get(msfm, lambda: msfm.modulation(*maps, features))
            return msfm.modulate(features, modulation)
        if torch.is_grad_enabled() and self.gradient_checkpointing:
            return self._gradient_checkpointing_func(msfm, features, *maps)
        return msfm(features, *maps)
