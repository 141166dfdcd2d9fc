"""CSM, the Customized Semantics Module: the cross-attention of a transformer block that also
attends to the image tokens.

The CSM replaces the cross-attention step of a transformer block: the block's own frozen
cross-attention runs twice with one query, once on the text tokens ``e_t`` (``A_t``) and once
on the Connector-mapped image tokens ``e_i``; the second result goes through LGWAM
(``A_i``), and the step returns ``A_t + A_i``. Sharing the frozen weights is exactly the
"frozen copy" the figure draws. LGWAM's zero-initialised ``W`` makes ``A_i`` zero at
initialisation, so a fresh CSM computes what the pretrained block computed.

:class:`CSMAttention` is that cross-attention: a diffusers :class:`Attention` whose ``csm``
submodule holds the Connector and LGWAM. Both branches run through the layer's attention
processor, whichever diffusers installs (scaled dot product, sliced, fused projections,
xformers), so every processor call of diffusers keeps the CSM working; a processor that is
not plain attention (IP-Adapter, Custom Diffusion, added key/value projections) would compute
something else on the image tokens, and is refused with an error.

The image tokens reach the layer the way diffusers' IP-Adapter hands its image tokens to its
processors: inside ``encoder_hidden_states`` (a :class:`CSMContext` pair of the text states
and the image tokens, built by the transformer that owns the layer). They have one row per
tile; the hidden states may hold several copies of those rows (classifier-free guidance).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from diffusers.models.attention_processor import (
    Attention,
    AttnProcessor,
    AttnProcessor2_0,
    AttnProcessorNPU,
    FusedAttnProcessor2_0,
    SlicedAttnProcessor,
    XFormersAttnProcessor,
)
from torch import nn

from megasr.model.megasr.conditions import StepCache, copies_of
from megasr.model.megasr.config import ModulesConfig

PLAIN_PROCESSORS = (
    AttnProcessor,
    AttnProcessor2_0,
    AttnProcessorNPU,
    FusedAttnProcessor2_0,
    SlicedAttnProcessor,
    XFormersAttnProcessor,
)
"""diffusers' processors that compute the layer's plain attention of a query over a context:
the only kind the CSM can run its visual branch through."""


class LGWAM(nn.Module):
    """Learnable gated weight adaptation: ``sigmoid(g) * W a``, ``W`` zero and ``g`` 0 at init."""

    def __init__(self, dim: int, bias: bool = True) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, dim, bias=bias)
        self.gate = nn.Parameter(torch.zeros(dim))
        nn.init.zeros_(self.proj.weight)
        if bias:
            nn.init.zeros_(self.proj.bias)

    def forward(self, attended: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.gate) * self.proj(attended)


class CSM(nn.Module):
    """The trainable part of one CSM: its Connector (None when the network shares one) and
    its LGWAM."""

    def __init__(self, query_dim: int, cross_attention_dim: int, modules: ModulesConfig) -> None:
        super().__init__()
        per_block = modules.connector == "per_block"
        self.connector = nn.Linear(modules.clip_width, cross_attention_dim) if per_block else None
        self.lgwam = LGWAM(query_dim, bias=modules.lgwam_bias)


class CSMContext(NamedTuple):
    """What a :class:`CSMAttention` attends to: the text states (copies x B rows), the image
    tokens (B rows) and the step cache of the batch of tiles (or None)."""

    text: torch.Tensor
    image_tokens: torch.Tensor
    cache: StepCache | None = None


class CSMAttention(Attention):
    """A block's cross-attention with the CSM visual branch (see the module docstring)."""

    def __init__(self, *, modules: ModulesConfig, **attention: Any) -> None:
        super().__init__(**attention)
        check_supported(self)
        self.csm = CSM(self.out_dim, self.cross_attention_dim, modules)

    @classmethod
    def like(cls, attn: Attention, modules: ModulesConfig) -> CSMAttention:
        """A CSM cross-attention with the architecture of ``attn`` (fresh weights), as
        diffusers' ``BasicTransformerBlock`` builds its ``attn2``."""
        csm = cls(
            modules=modules,
            query_dim=attn.query_dim,
            cross_attention_dim=attn.cross_attention_dim,
            heads=attn.heads,
            dim_head=attn.inner_dim // attn.heads,
            dropout=attn.dropout,
            bias=attn.use_bias,
            upcast_attention=attn.upcast_attention,
            out_bias=attn.to_out[0].bias is not None,
        )
        ours = {k: v.shape for k, v in csm.state_dict().items() if not k.startswith("csm.")}
        theirs = {k: v.shape for k, v in attn.state_dict().items()}
        if ours != theirs:
            raise ValueError("the CSM cannot rebuild this cross-attention layer exactly")
        return csm

    def set_processor(self, processor: Any) -> None:
        """diffusers' ``set_processor``, for plain attention processors only."""
        check_plain(processor)
        super().set_processor(processor)

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | CSMContext | None = None,
        attention_mask: torch.Tensor | None = None,
        **cross_attention_kwargs: Any,
    ) -> torch.Tensor:
        if not isinstance(encoder_hidden_states, CSMContext):
            return super().forward(
                hidden_states, encoder_hidden_states, attention_mask, **cross_attention_kwargs
            )
        text = super().forward(
            hidden_states, encoder_hidden_states.text, attention_mask, **cross_attention_kwargs
        )
        tokens = self._tokens(encoder_hidden_states, hidden_states.shape[0])
        image = super().forward(hidden_states, tokens, None, **cross_attention_kwargs)
        return text + self.csm.lgwam(image)

    def _tokens(self, context: CSMContext, rows: int) -> torch.Tensor:
        """The image tokens through this block's Connector, repeated to ``rows`` (once per
        batch of tiles with a step cache)."""

        def connect() -> torch.Tensor:
            tokens = context.image_tokens.to(self.to_k.weight.dtype)
            if self.csm.connector is not None:
                tokens = self.csm.connector(tokens)
            return tokens.repeat(copies_of(rows, tokens.shape[0]), 1, 1)

        if context.cache is None:
            return connect()
        return context.cache.get((self.csm, rows), connect)


def check_plain(processor: Any) -> None:
    """Refuse a processor the CSM cannot run its visual branch through."""
    if not isinstance(processor, PLAIN_PROCESSORS):
        names = ", ".join(kind.__name__ for kind in PLAIN_PROCESSORS)
        raise ValueError(
            f"{type(processor).__name__} cannot run a MegaSR CSM cross-attention: the CSM "
            f"attends to the image tokens through the layer's own processor, which must be "
            f"plain attention ({names}); IP-Adapter-style and other processors with weights "
            "of their own would replace the CSM's visual branch"
        )


def check_supported(attn: Attention) -> None:
    """Refuse attention variants the CSM's sum of two attentions would compute wrongly.

    SD-2 uses none of them; failing at construction beats a silently different result.
    """
    extras = {
        "spatial_norm": attn.spatial_norm is not None,
        "group_norm": attn.group_norm is not None,
        "norm_q/norm_k": attn.norm_q is not None or attn.norm_k is not None,
        "residual_connection": attn.residual_connection,
        "rescale_output_factor": attn.rescale_output_factor != 1.0,
        "norm_cross": attn.norm_cross is not None,
    }
    used = [name for name, present in extras.items() if present]
    if used:
        raise ValueError(f"the CSM does not support attention with {', '.join(used)}")
