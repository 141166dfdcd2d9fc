"""Engine calls that survive the two failures a GPU throws at a batch.

Out of device memory: free the allocator's cache and run the same tiles in calls of half the
size, down to one tile; the smaller size is handed back so the caller keeps using it for the
rest of its batch instead of running out of memory on every call. NaN or Inf in an output
(fp16 overflow on some inputs): count the engine's own float32 reruns, and run tiles it still
returns non-finite again on the engine's float32 twin.

A conditional engine's per-tile options go along with their tiles through every split.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from megasr.errors import EngineError
from megasr.model.engines.base import GenerationOptions, run_tiles
from megasr.worker.engines import EngineSlot, free_device_cache
from megasr.worker.metrics import WorkerMetrics


class TileRunner:
    """Runs tiles through engine slots and counts what it had to retry."""

    def __init__(self, metrics: WorkerMetrics) -> None:
        self.metrics = metrics

    def run(
        self,
        slot: EngineSlot,
        tiles: torch.Tensor,
        batch_size: int,
        options: Sequence[GenerationOptions] | None = None,
    ) -> tuple[torch.Tensor, int]:
        """All ``tiles`` in calls of at most ``batch_size``; returns the outputs and the size
        that fit in memory. ``options``: one per tile, for a conditional engine."""
        outputs: list[torch.Tensor] = []
        first = 0
        while first < len(tiles):
            part = tiles[first : first + batch_size]
            part_options = None if options is None else options[first : first + len(part)]
            try:
                result = self._call(slot, part, part_options)
            except torch.OutOfMemoryError as exc:
                free_device_cache(slot.device)
                if len(part) == 1:
                    raise EngineError(
                        f"engine {slot.name} ran out of device memory on one tile"
                    ) from exc
                self.metrics.oom_retries.inc()
                batch_size = max(1, len(part) // 2)
                continue
            self.metrics.batch_size_tiles.observe(len(part))
            self.metrics.tiles_processed.labels(slot.name).inc(len(part))
            outputs.append(result)
            first += len(part)
        return torch.cat(outputs), batch_size

    def _call(
        self,
        slot: EngineSlot,
        tiles: torch.Tensor,
        options: Sequence[GenerationOptions] | None,
    ) -> torch.Tensor:
        retried_before = getattr(slot.engine, "nan_retries", 0)
        result = run_tiles(slot.engine, tiles, options)
        retried = getattr(slot.engine, "nan_retries", 0) - retried_before
        if retried:  # the engine reran in float32 itself
            self.metrics.nan_retries.inc(retried)
        bad = ~torch.isfinite(result).flatten(1).all(dim=1)
        if not bad.any():
            return result
        if not slot.can_retry_in_float32:
            raise EngineError(f"engine {slot.name} produced NaN or Inf in float32")
        self.metrics.nan_retries.inc()
        if options is not None:
            options = [option for option, rerun in zip(options, bad.tolist(), strict=True) if rerun]
        result[bad] = run_tiles(slot.float32(), tiles[bad], options)
        if not torch.isfinite(result).all():
            raise EngineError(f"engine {slot.name} produced NaN or Inf even in float32")
        return result
