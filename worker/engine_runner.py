"""Engine calls that survive the two failures a GPU throws at a batch.

Out of device memory: a tile engine's call is rerun by this module in calls of half the
size, down to one tile (after freeing the allocator's cache); the smaller size is handed back
so the caller keeps using it for the rest of its batch instead of running out of memory on
every call. An image engine halves its own forward passes (it alone knows its tiles) and
counts it in ``oom_retries``, which this module turns into the metric.

NaN or Inf in an output (fp16 overflow on some inputs): count the engine's own float32
reruns, and run tiles or images it still returns non-finite again on the engine's float32
twin.

Each engine call that returns, and each forward pass of an image engine, is progress:
``on_progress`` is called for it (the batching worker's watchdog listens there).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from megasr.errors import EngineError
from megasr.model.engines.base import Cancelled, ImageEngine, ImageTask
from megasr.worker.engines import EngineSlot, free_device_cache
from megasr.worker.prometheus import WorkerMetrics


class EngineRunner:
    """Runs tiles and images through engine slots and counts what it had to retry."""

    def __init__(self, metrics: WorkerMetrics) -> None:
        self.metrics = metrics
        self.on_progress: Callable[[], None] = lambda: None

    def run(
        self, slot: EngineSlot, tiles: torch.Tensor, batch_size: int
    ) -> tuple[torch.Tensor, int]:
        """All ``tiles`` through a tile engine in calls of at most ``batch_size``; returns the
        outputs and the size that fit in memory."""
        outputs: list[torch.Tensor] = []
        first = 0
        while first < len(tiles):
            part = tiles[first : first + batch_size]
            try:
                result = self._call(slot, part)
            except torch.OutOfMemoryError as exc:
                free_device_cache(slot.device)
                if len(part) == 1:
                    raise EngineError(
                        f"engine {slot.name} ran out of device memory on one tile"
                    ) from exc
                self.metrics.oom_retries.inc()
                batch_size = max(1, len(part) // 2)
                continue
            self._count_batch(slot, len(part))
            outputs.append(result)
            first += len(part)
        return torch.cat(outputs), batch_size

    def restore(self, slot: EngineSlot, tasks: list[ImageTask]) -> list[torch.Tensor | Cancelled]:
        """Whole images through an image engine, which batches their tiles itself; an image
        that comes back non-finite is restored again on the float32 twin."""
        engine: ImageEngine = slot.engine
        oom_before = engine.oom_retries
        try:
            results = engine.restore(tasks, on_batch=lambda n: self._count_batch(slot, n))
        finally:
            self.metrics.oom_retries.inc(engine.oom_retries - oom_before)
        bad = [
            index
            for index, result in enumerate(results)
            if isinstance(result, torch.Tensor) and not torch.isfinite(result).all()
        ]
        if not bad:
            return results
        if not slot.can_retry_in_float32:
            raise EngineError(f"engine {slot.name} produced NaN or Inf in float32")
        self.metrics.nan_retries.inc(len(bad))
        twin: ImageEngine = slot.float32()
        again = twin.restore([tasks[i] for i in bad], lambda n: self._count_batch(slot, n))
        for index, result in zip(bad, again, strict=True):
            if isinstance(result, torch.Tensor) and not torch.isfinite(result).all():
                raise EngineError(f"engine {slot.name} produced NaN or Inf even in float32")
            results[index] = result
        return results

    def _count_batch(self, slot: EngineSlot, tiles: int) -> None:
        self.on_progress()
        self.metrics.batch_size_tiles.observe(tiles)
        self.metrics.tiles_processed.labels(slot.name).inc(tiles)

    def _call(self, slot: EngineSlot, tiles: torch.Tensor) -> torch.Tensor:
        retried_before = getattr(slot.engine, "nan_retries", 0)
        result = slot.engine.run(tiles)
        retried = getattr(slot.engine, "nan_retries", 0) - retried_before
        if retried:  # the engine reran in float32 itself
            self.metrics.nan_retries.inc(retried)
        bad = ~torch.isfinite(result).flatten(1).all(dim=1)
        if not bad.any():
            return result
        if not slot.can_retry_in_float32:
            raise EngineError(f"engine {slot.name} produced NaN or Inf in float32")
        self.metrics.nan_retries.inc()
        result[bad] = slot.float32().run(tiles[bad])
        if not torch.isfinite(result).all():
            raise EngineError(f"engine {slot.name} produced NaN or Inf even in float32")
        return result
