"""Work and peak throughput: FLOPs of a model call, and the card's measured matmul peak.

FLOPs come from :class:`torch.utils.flop_counter.FlopCounterMode`, which counts the
matrix multiplications and convolutions dispatched (2 FLOPs per multiply-add) and leaves
out elementwise work; for convolution networks and transformers that is nearly all the
arithmetic. The peak is measured, not taken from a data sheet: a large bfloat16 matmul is
the best case the card reaches in practice, so achieved / peak says how much of the
reachable throughput a model gets.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from megasr.model.benchmark.timing import synchronize


def count_flops(call: Callable[[], object]) -> int:
    """FLOPs of one ``call()``; run it under ``torch.no_grad`` to count inference only."""
    with FlopCounterMode(display=False) as counter:
        call()
    return counter.get_total_flops()


def matmul_peak_tflops(
    device: torch.device,
    dtype: torch.dtype = torch.bfloat16,
    size: int = 8192,
    iterations: int = 50,
) -> float:
    """TFLOP/s of ``size`` x ``size`` matmuls in ``dtype`` on ``device``, after a warm-up."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        torch.matmul(a, b)
    synchronize(device)
    start = time.perf_counter()
    for _ in range(iterations):
        torch.matmul(a, b)
    synchronize(device)
    seconds = time.perf_counter() - start
    return achieved_tflops(2 * size**3 * iterations, seconds)


def achieved_tflops(flops: float, seconds: float) -> float:
    return flops / seconds / 1e12
