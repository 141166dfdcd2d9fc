"""CSM, the Customized Semantics Module, as diffusers attention processors.

The CSM replaces the cross-attention step of a transformer block: the block's own frozen
cross-attention runs twice with one query, once on the text tokens ``e_t`` (``A_t``) and once
on the Connector-mapped image tokens ``e_i``; the second result goes through LGWAM
(``A_i``), and the step returns ``A_t + A_i``. Sharing the frozen weights is exactly the
"frozen copy" the figure draws. LGWAM's zero-initialised ``W`` makes ``A_i`` zero at
initialisation, so a fresh CSM computes what the pretrained block computed.

diffusers keeps only the ``cross_attention_kwargs`` that the processor's ``__call__`` names,
so both processors here name the ``megasr`` key: the CSM reads it and the plain processor
(every self-attention, and cross-attention where the CSM is switched off) accepts it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from torch import nn

from megasr.model.megasr.conditions import MegaSRConditions


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


class CSMProcessor(nn.Module):
    """Cross-attention with the CSM visual branch; its Connector and LGWAM are trainable.

    ``connector_width`` None means the image tokens arrive already mapped to the
    cross-attention width (a Connector shared by all blocks, applied once per forward).
    """

    def __init__(
        self,
        query_dim: int,
        cross_attention_dim: int,
        connector_width: int | None,
        lgwam_bias: bool = True,
    ) -> None:
        super().__init__()
        self.connector = (
            None if connector_width is None else nn.Linear(connector_width, cross_attention_dim)
        )
        self.lgwam = LGWAM(query_dim, bias=lgwam_bias)

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        megasr: MegaSRConditions | None = None,
    ) -> torch.Tensor:
        # Defined here, not only as forward, because diffusers reads this signature to decide
        # which cross_attention_kwargs reach the processor.
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, megasr)

    def forward(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        megasr: MegaSRConditions | None,
    ) -> torch.Tensor:
        if encoder_hidden_states is None:
            raise ValueError("the CSM is a cross-attention: it needs encoder_hidden_states")
        query = _split_heads(attn.to_q(hidden_states), attn.heads)
        text = _attend(attn, query, encoder_hidden_states, attention_mask)
        if megasr is None or megasr.image_tokens is None:
            return text
        tokens = megasr.image_tokens.to(hidden_states.dtype)
        if self.connector is not None:
            tokens = self.connector(tokens)
        return text + self.lgwam(_attend(attn, query, tokens, None))


class PlainAttnProcessor(AttnProcessor2_0):
    """diffusers' scaled-dot-product attention, accepting (and ignoring) the ``megasr`` key."""

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        megasr: MegaSRConditions | None = None,
    ) -> torch.Tensor:
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb)


def check_supported(attn: Attention) -> None:
    """Refuse attention variants whose extra steps the CSM does not perform.

    SD-2 uses none of them; failing at install time beats a silently different result.
    """
    extras = {
        "spatial_norm": attn.spatial_norm is not None,
        "group_norm": attn.group_norm is not None,
        "norm_q/norm_k": attn.norm_q is not None or attn.norm_k is not None,
        "residual_connection": attn.residual_connection,
        "rescale_output_factor": attn.rescale_output_factor != 1.0,
    }
    used = [name for name, present in extras.items() if present]
    if used:
        raise ValueError(f"the CSM does not support attention with {', '.join(used)}")


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    batch, length, width = x.shape
    return x.view(batch, length, heads, width // heads).transpose(1, 2)


def _attend(
    attn: Attention,
    query: torch.Tensor,
    context: torch.Tensor,
    attention_mask: torch.Tensor | None,
) -> torch.Tensor:
    """Attention of the (already projected) ``query`` over ``context``, then the output layer."""
    batch = query.shape[0]
    if attn.norm_cross:
        context = attn.norm_encoder_hidden_states(context)
    key = _split_heads(attn.to_k(context), attn.heads)
    value = _split_heads(attn.to_v(context), attn.heads)
    if attention_mask is not None:
        attention_mask = attn.prepare_attention_mask(attention_mask, context.shape[1], batch)
        attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask)
    out = out.transpose(1, 2).flatten(2).to(query.dtype)
    return attn.to_out[1](attn.to_out[0](out))
