"""Seconds and peak memory of one runner call, measured the same way for every row.

One warm-up call first (oneDNN and cuDNN pick their kernels, allocators grow, lazy loads
happen), then ``repeats`` timed calls; the best is kept. On a machine shared with other
work, the best run is the one least disturbed: the median would measure the neighbours.
Peak memory is taken over the first timed call (see :mod:`megasr.model.benchmark.memory`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from megasr.model.benchmark.memory import PeakMemory
from megasr.model.benchmark.runners import Runner


@dataclass(frozen=True)
class Measurement:
    """One batch size of one runner."""

    batch: int
    seconds: float
    peak_memory_bytes: int | None

    @property
    def tiles_per_second(self) -> float:
        return self.batch / self.seconds


def measure(runner: Runner, tiles: torch.Tensor, repeats: int) -> tuple[Measurement, torch.Tensor]:
    """Time ``runner`` on ``tiles`` (``repeats`` >= 1); also returns the warm-up's output."""
    output = runner.run(tiles)
    with PeakMemory(runner.device) as peak:
        first = _timed(runner, tiles)
    times = [first, *(_timed(runner, tiles) for _ in range(repeats - 1))]
    return Measurement(len(tiles), min(times), peak.bytes), output


def _timed(runner: Runner, tiles: torch.Tensor) -> float:
    synchronize(runner.device)
    start = time.perf_counter()
    runner.run(tiles)
    synchronize(runner.device)
    return time.perf_counter() - start


def synchronize(device: torch.device) -> None:
    """Wait for queued CUDA work, so a clock reading covers it; nothing to wait for on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
