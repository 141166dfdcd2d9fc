"""Which vector instructions PyTorch's CPU kernels may use here: the CPU's, under any cap.

Two environment variables cap them, read by the libraries when they start:

- ``ONEDNN_MAX_CPU_ISA`` caps oneDNN, which runs every convolution and matmul (e.g.
  ``AVX512_CORE_BF16``: AVX-512 with bfloat16 dot products but no AMX, as on an AMD Zen 4;
  ``AVX2``: an older laptop). ``ONEDNN_VERBOSE=1`` names the ISA of each kernel it runs.
- ``ATEN_CPU_CAPABILITY`` (``default``, ``avx2``, ``avx512``) caps ATen's own vectorised
  kernels (concatenation, activations, adds) and the ISA inductor generates its C++ for.

Set together they emulate a smaller CPU on a larger one, which is how the CPU figures in
docs/benchmarks.md cover CPUs this project has no machine of (``bench/cpu_speed.py``). What
they cannot emulate: clock speed, cache sizes, memory bandwidth, and a CPU that runs
AVX-512 at half width (Zen 4 splits each 512-bit instruction in two), so an emulated CPU is
an upper bound for the real one. Caches of anything compiled or measured for this CPU
(compiled networks, the calibrated tile and dtype) are keyed by :func:`isa_key`, so a cap
or another CPU never reuses them.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
from pathlib import Path

import torch

ONEDNN_CAP_ENV = "ONEDNN_MAX_CPU_ISA"
ATEN_CAP_ENV = "ATEN_CPU_CAPABILITY"

# oneDNN's ISA names from the smallest to the largest; names on one line are aliases.
_ONEDNN_LEVELS = (
    ("SSE41",),
    ("AVX",),
    ("AVX2",),
    ("AVX2_VNNI",),
    ("AVX2_VNNI_2",),
    ("AVX512_CORE",),
    ("AVX512_CORE_VNNI",),
    ("AVX512_CORE_BF16",),
    ("AVX10_1_512", "AVX512_CORE_FP16"),
    ("AVX10_1_512_AMX", "AVX512_CORE_AMX"),
    ("AVX10_1_512_AMX_FP16", "AVX512_CORE_AMX_FP16"),
    ("ALL", "DEFAULT"),
)
_RANK = {name: rank for rank, names in enumerate(_ONEDNN_LEVELS) for name in names}
_ALL = _RANK["ALL"]


def onednn_cap() -> str | None:
    """The ``ONEDNN_MAX_CPU_ISA`` in force, upper case; None when absent or ``ALL``."""
    value = os.environ.get(ONEDNN_CAP_ENV, "").strip().upper()
    return None if not value or _RANK.get(value) == _ALL else value


def aten_cap() -> str | None:
    """The ``ATEN_CPU_CAPABILITY`` in force, lower case; None when absent."""
    value = os.environ.get(ATEN_CAP_ENV, "").strip().lower()
    return value or None


def onednn_allows(level: str) -> bool:
    """Whether the cap (if any) lets oneDNN use ``level`` (an unknown cap allows all)."""
    cap = onednn_cap()
    return cap is None or _RANK.get(cap, _ALL) >= _RANK[level]


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The instruction-set flags of /proc/cpuinfo (empty where there is none)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def has_amx() -> bool:
    """AMX bfloat16 tiles, usable by oneDNN under the cap in force."""
    return "amx_bf16" in cpu_flags() and onednn_allows("AVX10_1_512_AMX")


def has_native_bf16() -> bool:
    """bfloat16 dot products in hardware (AVX512-BF16 or AMX), usable by oneDNN under the
    cap in force; below ``AVX512_CORE_BF16`` oneDNN has no bfloat16 convolution, and ATen
    falls back to a slow reference path (25 to 33 s against 2 s for float32 on a 64-pixel
    tile under ``AVX2``, measured here)."""
    flags = cpu_flags()
    return bool({"avx512_bf16", "amx_bf16"} & flags) and onednn_allows("AVX512_CORE_BF16")


def instruction_sets() -> str:
    """The vector extensions that matter here, named as ``lscpu`` flags are, e.g.
    ``avx2 avx512f avx512_bf16 amx_bf16``."""
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_bf16")
    return " ".join(flag for flag in wanted if flag in cpu_flags()) or "none of AVX2, AVX-512"


def describe_isa() -> str:
    """The CPU's vector extensions and any caps, for a benchmark's report."""
    caps = [f"{ONEDNN_CAP_ENV}={onednn_cap()}" if onednn_cap() else ""]
    caps.append(f"{ATEN_CAP_ENV}={aten_cap()}" if aten_cap() else "")
    capped = ", ".join(cap for cap in caps if cap)
    return instruction_sets() + (f"; capped: {capped}" if capped else "; no cap")


def isa_key() -> str:
    """A short fingerprint of this CPU, its caps and torch: what compiled code and CPU
    measurements are only valid for."""
    parts = (
        platform.machine(),
        cpu_model(),
        " ".join(sorted(cpu_flags())),
        onednn_cap() or "",
        aten_cap() or "",
        torch.__version__,
    )
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (what ``lscpu`` prints as Model name)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"
