"""CSM, the Customized Semantics Module, as diffusers attention processors.

The CSM replaces the cross-attention step of a transformer block: the block's own frozen
cross-attention runs twice with one query, once on the text tokens ``e_t`` (``A_t``) and once
on the Connector-mapped image tokens ``e_i``; the second result goes through LGWAM
(``A_i``), and the step returns ``A_t + A_i``. Sharing the frozen weights is exactly the
"frozen copy" the figure draws. LGWAM's zero-initialised ``W`` makes ``A_i`` zero at
initialisation, so a fresh CSM computes what the pretrained block computed.

Keys and values depend on the tokens only, never on the denoising step, so with a
:class:`~megasr.model.megasr.conditions.StepCache` they are computed once per batch of tiles.
The image tokens have one row per tile; their keys and values are repeated over the copies of
the batch (classifier-free guidance), where the text already has a row per copy.

diffusers keeps only the ``cross_attention_kwargs`` that the processor's ``__call__`` names,
so every processor here names the ``megasr`` key: the CSM reads it, the plain processors
(every self-attention, and cross-attention where the CSM is switched off) accept it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import (
    Attention,
    AttnProcessor2_0,
    FusedAttnProcessor2_0,
)
from torch import nn

from megasr.model.megasr.conditions import MegaSRConditions, StepCache, copies_of

KeyValue = tuple[torch.Tensor, torch.Tensor]


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
        cache = megasr.cache if megasr is not None else None
        query = _split_heads(attn.to_q(hidden_states), attn.heads)
        text_kv = _cached(cache, (self, "text"), lambda: key_value(attn, encoder_hidden_states))
        text = _attend(attn, query, text_kv, attention_mask)
        if megasr is None or megasr.image_tokens is None:
            return text
        image_kv = _cached(
            cache, (self, "image"), lambda: self._image_key_value(attn, megasr, query.shape[0])
        )
        return text + self.lgwam(_attend(attn, query, image_kv, None))

    def _image_key_value(self, attn: Attention, megasr: MegaSRConditions, rows: int) -> KeyValue:
        """Keys and values of the image tokens, one row per tile, repeated to ``rows``."""
        tokens = megasr.image_tokens.to(attn.to_k.weight.dtype)
        if self.connector is not None:
            tokens = self.connector(tokens)
        copies = copies_of(rows, tokens.shape[0])
        key, value = key_value(attn, tokens)
        return key.repeat(copies, 1, 1, 1), value.repeat(copies, 1, 1, 1)


class IgnoresConditions:
    """A diffusers attention processor that accepts (and ignores) the ``megasr`` key.

    Mixed in before the diffusers processor it extends; the ``__call__`` is spelled out
    because diffusers reads its signature to decide which keyword arguments reach it.
    """

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


class PlainAttnProcessor(IgnoresConditions, AttnProcessor2_0):
    """diffusers' scaled-dot-product attention, for layers without a CSM."""


class PlainFusedAttnProcessor(IgnoresConditions, FusedAttnProcessor2_0):
    """diffusers' fused-projection attention, for fused self-attention layers."""


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


def key_value(attn: Attention, context: torch.Tensor) -> KeyValue:
    """The block's frozen keys and values of ``context``, split into heads."""
    if attn.norm_cross:
        context = attn.norm_encoder_hidden_states(context)
    return (
        _split_heads(attn.to_k(context), attn.heads),
        _split_heads(attn.to_v(context), attn.heads),
    )


def _cached(cache: StepCache | None, owner: object, compute) -> KeyValue:
    return compute() if cache is None else cache.get(owner, compute)


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    batch, length, width = x.shape
    return x.view(batch, length, heads, width // heads).transpose(1, 2)


def _attend(
    attn: Attention,
    query: torch.Tensor,
    keys_values: KeyValue,
    attention_mask: torch.Tensor | None,
) -> torch.Tensor:
    """Attention of the (already projected) ``query`` over keys and values, then the output
    layer of the block."""
    key, value = keys_values
    batch = query.shape[0]
    if attention_mask is not None:
        attention_mask = attn.prepare_attention_mask(attention_mask, key.shape[2], batch)
        attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask)
    out = out.transpose(1, 2).flatten(2).to(query.dtype)
    return attn.to_out[1](attn.to_out[0](out))
