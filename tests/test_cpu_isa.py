"""ISA caps: what they tell the engine, that oneDNN obeys them, and that every ISA's path
gives the float32 result within its tolerance.

A cap only takes effect in a process that starts with it (oneDNN reads it once), so each
capped run is a child process running the engine's own code on the tiny network of
:mod:`tiny_realesrgan`, with ``ONEDNN_VERBOSE`` naming the ISA of every convolution.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_realesrgan import TinyRealESRGAN

from megasr.model.cpu_isa import cpu_flags, describe_isa, has_amx, has_native_bf16, isa_key
from megasr.settings import Settings

TESTS = Path(__file__).resolve().parent
LSB = 1 / 255

CHILD = """
import sys, numpy as np, torch
from tiny_realesrgan import TinyRealESRGAN
from megasr.model.device import fast_dtype
from megasr.settings import Settings
torch.set_num_threads(1)
engine = TinyRealESRGAN(Settings(cache_dir=sys.argv[1], backend="eager", tile=32))
engine.load(torch.device("cpu"))  # the fast dtype under the cap
x = torch.from_numpy(np.load(sys.argv[2]))
np.save(sys.argv[3], engine.run(x).numpy())
print("dtype", str(engine.dtype).removeprefix("torch."), flush=True)
"""


def test_a_cap_below_the_cpu_turns_off_what_it_caps(monkeypatch: pytest.MonkeyPatch) -> None:
    flags = cpu_flags()
    key = isa_key()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")
    assert not has_amx()
    assert has_native_bf16() == bool({"avx512_bf16", "amx_bf16"} & flags)
    assert "capped: ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16" in describe_isa()
    assert isa_key() != key
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx2")
    assert not has_native_bf16() and not has_amx()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "ALL")  # no cap
    assert has_amx() == ("amx_bf16" in flags)
    assert isa_key() == key


@pytest.fixture(scope="module")
def photo(coffee: np.ndarray) -> np.ndarray:
    crop = np.ascontiguousarray(coffee[200:224, 300:324])
    return (torch.from_numpy(crop).permute(2, 0, 1)[None].float() / 255).numpy()


@pytest.fixture(scope="module")
def float32(photo: np.ndarray, tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    engine = TinyRealESRGAN(Settings(cache_dir=tmp_path_factory.mktemp("f32"), tile=32))
    engine.load(torch.device("cpu"), torch.float32)
    return engine.run(torch.from_numpy(photo)).numpy()


def capped_run(cap: str, photo: np.ndarray, tmp_path: Path) -> tuple[str, str, np.ndarray]:
    """The engine's fast path in a child under ``cap``: its dtype, oneDNN's log, output."""
    np.save(tmp_path / "in.npy", photo)
    env = {
        **os.environ,
        "ONEDNN_MAX_CPU_ISA": cap,
        "ONEDNN_VERBOSE": "1",
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
    }
    args = [str(tmp_path), str(tmp_path / "in.npy"), str(tmp_path / "out.npy")]
    done = subprocess.run(
        [sys.executable, "-c", CHILD, *args], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    dtype = next(line.split()[1] for line in done.stdout.splitlines() if line.startswith("dtype"))
    return dtype, done.stdout, np.load(tmp_path / "out.npy")


def kernels(verbose: str) -> set[str]:
    """The implementations oneDNN ran convolutions with, e.g. ``brg_conv_fwd:avx2``."""
    return {
        line.split(",")[6]
        for line in verbose.splitlines()
        if line.startswith("onednn_verbose") and ",exec,cpu,convolution," in line
    }


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1 / np.mean((a - b) ** 2)))


@pytest.mark.parametrize(
    ("cap", "needs", "kernel_isa"),
    [
        ("AVX2", "avx2", "avx2"),  # an older laptop: float32 is the fast path
        ("AVX512_CORE_BF16", "avx512_bf16", "avx512_core_bf16"),  # Zen 4-like, no AMX
        ("ALL", "amx_bf16", "amx"),  # this CPU uncapped, where it has AMX
    ],
)
def test_each_isa_path_uses_that_isa_and_gives_the_float32_result(
    cap: str,
    needs: str,
    kernel_isa: str,
    photo: np.ndarray,
    float32: np.ndarray,
    tmp_path: Path,
) -> None:
    if needs not in cpu_flags():
        pytest.skip(f"this CPU has no {needs}, so {cap} cannot be run here")
    dtype, verbose, out = capped_run(cap, photo, tmp_path)

    ran = kernels(verbose)
    assert ran and all(kernel_isa in name for name in ran), ran
    assert out.shape == float32.shape
    if cap == "AVX2":
        assert dtype == "float32"  # oneDNN has no bfloat16 convolution below AVX512-BF16
        assert np.abs(out - float32).max() <= LSB
    else:
        assert dtype == "bfloat16"
        assert psnr(out, float32) >= 45.0 and not np.array_equal(out, float32)
