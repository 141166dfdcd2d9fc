"""Running a list of work items in batches that shrink when the device runs out of memory.

The sampler and the tiled VAE put many tiles through one forward pass. On out-of-device
memory the batch is halved (down to one item) and the smaller size is kept for the rest of
the work, so a large request degrades to smaller passes instead of failing, and one that
does not fit even alone fails with torch's own error.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import torch

T = TypeVar("T")
R = TypeVar("R")


class HalvingBatches:
    """Batches of at most :attr:`size` items; :attr:`oom_retries` counts the halvings."""

    def __init__(self, size: int, device: torch.device) -> None:
        if size < 1:
            raise ValueError(f"a batch holds at least one item, not {size}")
        self.size = size
        self.device = device
        self.oom_retries = 0

    def map(self, fn: Callable[[list[T]], Sequence[R]], items: Sequence[T]) -> list[R]:
        """``fn`` over consecutive batches of ``items``; one result per item, in order."""
        results: list[R] = []
        first = 0
        while first < len(items):
            batch = list(items[first : first + self.size])
            try:
                results.extend(fn(batch))
            except torch.OutOfMemoryError:
                if len(batch) == 1:
                    raise
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                self.size = max(1, len(batch) // 2)
                self.oom_retries += 1
                continue
            first += len(batch)
        return results
