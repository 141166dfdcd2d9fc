"""Device and fast-dtype resolution."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from megasr.errors import EngineError
from megasr.model.device import cpu_has_native_bf16, fast_dtype, resolve_device, resolve_dtype

CPU = torch.device("cpu")


def test_named_devices() -> None:
    assert resolve_device("cpu") == CPU
    expected_auto = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected_auto
    with pytest.raises(EngineError, match="unknown device 'tpu'"):
        resolve_device("tpu")


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA"
)
def test_cuda_without_a_gpu_is_refused() -> None:
    with pytest.raises(EngineError, match="no CUDA device is available"):
        resolve_device("cuda")


def test_named_dtypes() -> None:
    assert resolve_dtype("float32", CPU) == torch.float32
    assert resolve_dtype("bfloat16", CPU) == torch.bfloat16
    assert resolve_dtype("auto", CPU) == fast_dtype(CPU)
    with pytest.raises(EngineError, match="unknown dtype 'int8'"):
        resolve_dtype("int8", CPU)


def test_cpu_fast_dtype_follows_the_bf16_instructions() -> None:
    assert fast_dtype(CPU) == (torch.bfloat16 if cpu_has_native_bf16() else torch.float32)


@pytest.mark.skipif(not Path("/proc/cpuinfo").exists(), reason="needs Linux's /proc/cpuinfo")
def test_bf16_check_agrees_with_the_cpu_flags() -> None:
    """PyTorch's own check and the kernel's view of the CPU must agree."""
    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
    has_bf16 = bool(flags & {"avx512_bf16", "amx_bf16"})
    assert cpu_has_native_bf16() == (has_bf16 and torch.backends.mkldnn.is_available())
