"""Low-rank adaptation (LoRA, Hu et al. 2021) of a network's linear layers, and its merge.

A frozen ``Linear`` ``W`` gets a trainable detour ``(alpha / rank) * B A``: ``A`` maps down to
``rank`` channels, ``B`` back up, and ``B`` starts at zero, so training starts from the
pretrained network exactly. After training the detour is merged into ``W`` and the network
is again the plain architecture, which every loader of that model reads.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from megasr.errors import EngineError


class LoRALinear(nn.Module):
    """``base(x) + scale * up(down(x))`` with ``base`` frozen."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float) -> None:
        super().__init__()
        self.base = base.requires_grad_(False)
        self.down = nn.Linear(base.in_features, rank, bias=False)
        self.up = nn.Linear(rank, base.out_features, bias=False)
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.up.weight)
        self.scale = alpha / rank
        self.to(device=base.weight.device, dtype=base.weight.dtype)

    def forward(self, x: Tensor) -> Tensor:
        return self.base(x) + self.up(self.down(x)) * self.scale

    @torch.no_grad()
    def merged(self) -> nn.Linear:
        """The base layer with the detour folded into its weight."""
        delta = (self.up.weight.float() @ self.down.weight.float()) * self.scale
        self.base.weight.add_(delta.to(self.base.weight.dtype))
        return self.base


def add_lora(model: nn.Module, names: Iterable[str], rank: int, alpha: float) -> int:
    """Wrap every ``Linear`` whose attribute name is in ``names``; returns how many."""
    if rank < 1:
        raise EngineError(f"LoRA rank must be at least 1, got {rank}")
    wanted = set(names)
    targets = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if name in wanted and isinstance(child, nn.Linear)
    ]
    if not targets:
        raise EngineError(f"no linear layer named {', '.join(sorted(wanted))} to adapt")
    for parent, name, child in targets:
        setattr(parent, name, LoRALinear(child, rank, alpha))
    return len(targets)


def merge_lora(model: nn.Module) -> None:
    """Replace every :class:`LoRALinear` in ``model`` by its merged base layer."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, LoRALinear):
                setattr(parent, name, child.merged())
