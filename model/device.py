"""Which device an engine runs on, and which reduced precision is fast there.

The settings speak in names ("auto", "cpu", "cuda"; "auto", "float32", ...); engines want a
``torch.device`` and a ``torch.dtype``. The fast dtype is the one autocast should use:

- CUDA: bfloat16 where the card computes it natively (Ampere and later): as fast as float16
  there, and its float32-sized exponent cannot overflow to Inf the way float16 activations
  of a deep residual network can. float16 on older cards.
- CPU: bfloat16 only where the CPU has bfloat16 instructions (AVX512-BF16 or AMX) and
  PyTorch has oneDNN to use them; elsewhere oneDNN emulates bfloat16, which gains little
  or nothing over float32 and costs precision, so float32 it is. Eager bfloat16 with
  channels-last ran the default engine 2.1-2.5x faster than float32 on a 2-core AMD EPYC
  (Zen 4, AVX512-BF16) and about 4x faster on a 2-core Xeon with AMX (docs/benchmarks.md).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from megasr.cpu_quota import CGROUP_ROOT, cgroup_cpu_quota
from megasr.errors import EngineError
from megasr.model.cpu_isa import has_native_bf16
from megasr.settings import Settings

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# PyTorch's own count before anyone changed it: one per physical core this process may run
# on (OMP_NUM_THREADS, where set). It knows nothing of a container's CPU quota.
_TORCH_DEFAULT_THREADS = torch.get_num_threads()


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when present, else the CPU; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise EngineError("device 'cuda' was asked for, but no CUDA device is available")
    if name not in ("cpu", "cuda"):
        raise EngineError(f"unknown device {name!r}; expected auto, cpu or cuda")
    return torch.device(name)


def engine_placement(settings: Settings) -> tuple[torch.device, torch.dtype | None]:
    """Where the configured engines run: the device, and the dtype forced on every engine
    (None lets each take its own fast path). Applies ``settings.cpu_threads`` on the way."""
    device = resolve_device(settings.device)
    use_cpu_threads(settings.cpu_threads)
    return device, None if settings.dtype == "auto" else resolve_dtype(settings.dtype, device)


def use_cpu_threads(count: int) -> None:
    """Compute on ``count`` CPU threads (0: :func:`usable_cpu_threads`).

    PyTorch's OpenMP threads spin at every barrier. On cores another busy process shares (a
    CPU worker beside its gateway, two workers on one host), that spinning made a 128 px
    bfloat16 tile take 21.4 s instead of 4.5 s with one thread (docs/benchmarks.md), so a
    process that shares its cores should be given its own share of them.
    """
    torch.set_num_threads(count or usable_cpu_threads())


def usable_cpu_threads(cgroup_root: Path = CGROUP_ROOT) -> int:
    """One thread per physical core this process may use, at most its cgroup's CPU quota.

    A container limited to 2 CPUs on a 64-core host sees 64 cores; PyTorch would start 64
    threads that the quota then throttles, each barrier waiting on a descheduled thread.
    """
    quota = cgroup_cpu_quota(cgroup_root)
    if quota is None:
        return _TORCH_DEFAULT_THREADS
    return max(1, min(_TORCH_DEFAULT_THREADS, math.ceil(quota)))


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto`` -> :func:`fast_dtype` for ``device``; otherwise the named dtype."""
    if name == "auto":
        return fast_dtype(device)
    try:
        return _DTYPES[name]
    except KeyError:
        raise EngineError(f"unknown dtype {name!r}; expected auto, {', '.join(_DTYPES)}") from None


def fast_dtype(device: torch.device) -> torch.dtype:
    """The reduced precision worth using on ``device``, or float32 where none is faster."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return torch.float32


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN can run bfloat16 convolutions in hardware on this CPU, under any
    ``ONEDNN_MAX_CPU_ISA`` cap (:mod:`megasr.model.cpu_isa`); without oneDNN, no."""
    return torch.backends.mkldnn.is_available() and has_native_bf16()
