"""Peak memory of one call, on the CPU or a CUDA device.

CUDA: :func:`torch.cuda.max_memory_allocated` after a reset, minus what was allocated
before: the tensors the call needed on top of the loaded weights (the caching allocator's
reserve is not counted).

CPU: the peak resident set size of the process during the call, minus the resident size
before it. Linux keeps that peak (``VmHWM``) and resets it when ``5`` is written to
``/proc/self/clear_refs``, so it needs no sampling thread and sees every allocator in the
process: PyTorch's, oneDNN's, and native peers such as ncnn, which ``tracemalloc`` (Python
allocations only) would miss. ``ru_maxrss`` cannot be reset, so it only shows peaks higher
than every earlier one; where ``clear_refs`` is missing (not Linux) the peak is unknown
(None) rather than wrong. Memory freed by earlier calls but kept by the C allocator would
count as resident before the call and hide what the call reuses of it, so it is handed back
to the system first (glibc ``malloc_trim``).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
from pathlib import Path
from types import TracebackType

import torch

_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")
_RESET_PEAK = "5"


class PeakMemory:
    """``with PeakMemory(device) as peak: ...``, then ``peak.bytes`` (None when unknown)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.bytes: int | None = None
        self._before = 0

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._before = torch.cuda.memory_allocated(self.device)
        else:
            _release_free_heap()  # first: the peak must start from the trimmed size
            if _reset_cpu_peak():
                self._before = _status_kib("VmRSS") * 1024
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.bytes = torch.cuda.max_memory_allocated(self.device) - self._before
        elif self._before:
            self.bytes = max(0, _status_kib("VmHWM") * 1024 - self._before)


def _reset_cpu_peak() -> bool:
    try:
        _CLEAR_REFS.write_text(_RESET_PEAK)
    except OSError:
        return False
    return True


def _release_free_heap() -> None:
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: a looser estimate
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _status_kib(field: str) -> int:
    for line in _STATUS.read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} is missing from {_STATUS}")
