"""What MegaSR's new modules read on every forward pass, in one small dataclass.

diffusers hands ``cross_attention_kwargs`` unchanged to every transformer and attention
layer, so the conditions travel under one key (:data:`CONDITIONS_KEY`) of that dict. Every
tensor is batched like the latents (with classifier-free guidance too), which is what lets a
batch hold tiles of different images, each with its own conditions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields, replace

import torch

CONDITIONS_KEY = "megasr"


@dataclass
class MegaSRConditions:
    """Per-sample image tokens and guidance maps; a field left None switches its module off.

    ``image_tokens`` (B, N, clip_width) feed the CSM visual branch; ``hed`` and ``depth``
    (B, 1, H, W) and ``seg`` (B, 3, H, W), floats in [0, 1] at any resolution, feed the
    MSFM, which resizes them to each block.
    """

    image_tokens: torch.Tensor | None = None
    hed: torch.Tensor | None = None
    depth: torch.Tensor | None = None
    seg: torch.Tensor | None = None

    @property
    def has_guidance(self) -> bool:
        return self.hed is not None and self.depth is not None and self.seg is not None

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> MegaSRConditions:
        """Apply ``fn`` to every tensor present (device moves, CFG repeats, slicing)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return replace(self, **{k: None if v is None else fn(v) for k, v in values.items()})

    @staticmethod
    def cat(parts: list[MegaSRConditions]) -> MegaSRConditions:
        """Concatenate along the batch; a field must be present in all parts or in none."""
        merged = {}
        for f in fields(MegaSRConditions):
            values = [getattr(part, f.name) for part in parts]
            present = [v is not None for v in values]
            if any(present) and not all(present):
                raise ValueError(f"MegaSR condition {f.name!r} is missing in part of a batch")
            merged[f.name] = torch.cat(values) if all(present) else None
        return MegaSRConditions(**merged)
