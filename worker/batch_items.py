"""The batch in hand: each job with its RQ records and its image work, and how a tile
engine's call is cut from their tiles."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from rq.executions import Execution
from rq.job import Job
from rq.queue import Queue

from megasr.worker.upscale_job import UpscaleJob


@dataclass(eq=False)
class BatchItem:
    """One job in the batch in hand; ``done`` once it left the batch, whichever way."""

    job: Job
    queue: Queue
    execution: Execution
    work: UpscaleJob | None = None
    next_tile: int = 0
    done: bool = False

    @property
    def engine(self) -> str:
        """The engine label for metrics ("unknown" before the engine was resolved)."""
        return self.work.slot.name if self.work is not None else "unknown"

    @property
    def tiles_left(self) -> int:
        assert self.work is not None
        return len(self.work.tiles) - self.next_tile


class Segment(NamedTuple):
    """``count`` tiles of one job, from its tile ``first``, in an engine call."""

    item: BatchItem
    first: int
    count: int

    @property
    def tiles(self) -> torch.Tensor:
        return self.item.work.tiles[self.first : self.first + self.count]


def next_segments(items: list[BatchItem], size: int) -> list[Segment]:
    """The next ``size`` tiles, in job order, as one segment per job: a job's tiles stay in
    order, so each job is finished the moment its last tile is in."""
    segments = []
    for item in items:
        count = min(size, item.tiles_left)
        if count:
            segments.append(Segment(item, item.next_tile, count))
            size -= count
        if size == 0:
            break
    return segments
