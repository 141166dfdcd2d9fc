"""What MegaSR's new modules read on every forward pass, in one small dataclass.

diffusers hands ``cross_attention_kwargs`` unchanged to every transformer and attention
layer, so the conditions travel under one key (:data:`CONDITIONS_KEY`) of that dict.

Batching: each tensor of the conditions has one row per *image tile* (B). The latents may
hold several copies of those B rows, copy-major (classifier-free guidance stacks the
unconditional tiles, then the conditional ones: ``2B`` rows), so the modules broadcast the
conditions over the copies instead of computing the same guidance twice. A batch can hold
tiles of different images, each row with its own conditions.

A :class:`StepCache` holds what does not change from one denoising step to the next for one
fixed batch of tiles (the MSFM modulation computed from the guidance maps, the CSM keys and
values of the text and image tokens), so a sampler computes it at the first step and reuses
it; training passes none and computes everything each time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import TypeVar

import torch

CONDITIONS_KEY = "megasr"

T = TypeVar("T")


class StepCache:
    """Step-invariant results of one batch of tiles, by the module that computes them."""

    def __init__(self) -> None:
        self._entries: dict[object, object] = {}

    def get(self, owner: object, compute: Callable[[], T]) -> T:
        """``owner``'s entry, computed by ``compute`` the first time it is asked for."""
        if owner not in self._entries:
            self._entries[owner] = compute()
        return self._entries[owner]  # type: ignore[return-value]

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        """Bytes of every tensor held, for the sampler's cache budget."""
        return sum(t.nbytes for entry in self._entries.values() for t in _tensors(entry))


@dataclass
class MegaSRConditions:
    """Per-tile image tokens and guidance maps; a field left None switches its module off.

    ``image_tokens`` (B, N, clip_width) feed the CSM visual branch; ``hed`` and ``depth``
    (B, 1, H, W) and ``seg`` (B, 3, H, W), floats in [0, 1] at any resolution, feed the
    MSFM, which resizes them to each block. ``cache``: see :class:`StepCache`; once it holds a
    module's entry, that module no longer reads the tensors it was computed from.
    """

    image_tokens: torch.Tensor | None = None
    hed: torch.Tensor | None = None
    depth: torch.Tensor | None = None
    seg: torch.Tensor | None = None
    cache: StepCache | None = None

    @property
    def has_guidance(self) -> bool:
        return self.hed is not None and self.depth is not None and self.seg is not None

    @property
    def present(self) -> tuple[bool, ...]:
        """Which tensors are given, in field order: tiles batch together only when their
        conditions agree on this (a module cannot be on for some rows and off for others)."""
        return tuple(getattr(self, name) is not None for name in _TENSOR_FIELDS)

    def connected(self, image_tokens: torch.Tensor) -> MegaSRConditions:
        """The same conditions with the image tokens already through a shared Connector."""
        return replace(self, image_tokens=image_tokens)

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> MegaSRConditions:
        """Apply ``fn`` to every tensor present (device moves, slicing); the cache stays."""
        values = {name: getattr(self, name) for name in _TENSOR_FIELDS}
        return replace(self, **{k: None if v is None else fn(v) for k, v in values.items()})

    @staticmethod
    def cat(parts: list[MegaSRConditions]) -> MegaSRConditions:
        """Concatenate along the batch (with no cache); a field must be present in all parts
        or in none."""
        merged = {}
        for name in _TENSOR_FIELDS:
            values = [getattr(part, name) for part in parts]
            present = [v is not None for v in values]
            if any(present) and not all(present):
                raise ValueError(f"MegaSR condition {name!r} is missing in part of a batch")
            merged[name] = torch.cat(values) if all(present) else None
        return MegaSRConditions(**merged)


_TENSOR_FIELDS = tuple(f.name for f in fields(MegaSRConditions) if f.name != "cache")


def copies_of(rows: int, condition_rows: int) -> int:
    """How many copies of the conditions' rows a batch of ``rows`` holds (see the module doc)."""
    if condition_rows == 0 or rows % condition_rows:
        raise ValueError(f"a batch of {rows} does not hold whole copies of {condition_rows} tiles")
    return rows // condition_rows


def _tensors(entry: object) -> list[torch.Tensor]:
    if isinstance(entry, torch.Tensor):
        return [entry]
    if isinstance(entry, tuple | list):
        return [t for item in entry for t in _tensors(item)]
    return []
