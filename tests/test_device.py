"""Device, fast-dtype and CPU-thread resolution."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from megasr.errors import EngineError
from megasr.model.device import (
    cpu_has_native_bf16,
    fast_dtype,
    resolve_device,
    resolve_dtype,
    usable_cpu_threads,
    use_cpu_threads,
)
from megasr.model.engines.registry import load_engine
from megasr.settings import Settings
from megasr.worker.engines import EnginePool

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


@pytest.fixture
def many_threads():
    """Three threads to start from, so a limit to one is seen; the old count comes back."""
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    yield
    torch.set_num_threads(before)


@pytest.mark.usefixtures("many_threads")
def test_cpu_threads_limit_and_zero_is_the_usable_count() -> None:
    use_cpu_threads(1)
    assert torch.get_num_threads() == 1
    use_cpu_threads(0)
    assert torch.get_num_threads() == usable_cpu_threads()
    assert 1 <= usable_cpu_threads() <= len(os.sched_getaffinity(0))


def write_cgroup(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_a_cpu_quota_caps_the_thread_count(tmp_path: Path) -> None:
    root = write_cgroup(tmp_path, {"cpu.max": "50000 100000"})  # half a CPU: one thread
    assert usable_cpu_threads(root) == 1
    unlimited = write_cgroup(tmp_path / "none", {"cpu.max": "max 100000"})
    assert usable_cpu_threads(unlimited) >= usable_cpu_threads(root)


@pytest.mark.usefixtures("many_threads")
def test_the_cli_engine_loader_applies_the_setting() -> None:
    settings = Settings(cpu_threads=1, device="cpu", dtype="float32", tile=32)
    engine = load_engine("realesrgan-x4plus", settings)
    assert engine.name == "realesrgan-x4plus"
    assert torch.get_num_threads() == 1


@pytest.mark.usefixtures("many_threads")
def test_the_worker_engine_pool_applies_the_setting_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MEGASR_CPU_THREADS", "2")
    pool = EnginePool(Settings(device="cpu", worker_engines=["worker_engines:TinyEngine"]))
    pool.load()
    assert pool.ready and torch.get_num_threads() == 2
