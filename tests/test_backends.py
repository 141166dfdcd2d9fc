"""The engine backends (eager, inductor) against float32 eager, and their fallbacks.

The engine's own code runs here, on the tiny RRDBNet of :mod:`tiny_realesrgan`, so that
inductor compiles in tens of seconds rather than the minutes the full network takes on 2
cores. Every compile is a real one (a package built in a child process and loaded); the
packages live in one folder per module, so each dtype compiles once. The full network's
figures per backend are in docs/benchmarks.md (``bench/cpu_speed.py``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch._inductor.config as inductor_config
from tiny_realesrgan import TinyRealESRGAN

from megasr.model.engines.backends import (
    PackageBuild,
    compiles_in_background,
    package_path,
    resolve_backend,
)
from megasr.settings import Settings

CPU = torch.device("cpu")
LSB = 1 / 255
BACKENDS_LOGGER = "megasr.model.engines.backends"
ENGINE_LOGGER = "megasr.model.engines.realesrgan"


def tiny_engine(cache_dir: Path, backend: str, dtype: torch.dtype) -> TinyRealESRGAN:
    engine = TinyRealESRGAN(Settings(cache_dir=cache_dir, backend=backend, tile=32))
    engine.load(CPU, dtype)
    return engine


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1 / torch.mean((a - b) ** 2)))


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The cache folder the module's compiled packages are built into, once per dtype."""
    return tmp_path_factory.mktemp("packages")


@pytest.fixture(scope="module")
def photo(coffee: np.ndarray) -> torch.Tensor:
    """A 24x24 crop of a real photograph, (1, 3, 24, 24) float in [0, 1]."""
    crop = np.ascontiguousarray(coffee[200:224, 300:324])
    return torch.from_numpy(crop).permute(2, 0, 1)[None].float() / 255


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, photo: torch.Tensor) -> torch.Tensor:
    """Eager float32: what every backend is held to."""
    engine = tiny_engine(tmp_path_factory.mktemp("eager"), "eager", torch.float32)
    out = engine.run(photo)
    assert out.std() > 0.05, "the tiny network should produce an image, not a flat field"
    return out


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize(
    ("backend", "dtype", "max_lsb", "min_psnr"),
    [
        ("eager", torch.bfloat16, None, 45.0),
        ("inductor", torch.float32, 1.0, None),  # not quantised: within one 8-bit level
        ("inductor", torch.bfloat16, None, 45.0),
    ],
)
def test_every_backend_gives_the_float32_result_within_its_tolerance(
    packages: Path,
    photo: torch.Tensor,
    reference: torch.Tensor,
    backend: str,
    dtype: torch.dtype,
    max_lsb: float | None,
    min_psnr: float | None,
) -> None:
    engine = tiny_engine(packages, backend, dtype)
    out = engine.run(photo)

    assert engine.backend == backend and engine.compiled == (backend == "inductor")
    assert out.shape == reference.shape == (1, 3, 96, 96)
    if max_lsb is not None:
        assert (out - reference).abs().max() <= max_lsb * LSB
    if min_psnr is not None:
        assert psnr(out, reference) >= min_psnr
        assert not torch.equal(out, reference)  # it did run in reduced precision


@pytest.mark.usefixtures("one_torch_thread")
def test_a_package_takes_any_tile_size_and_a_batch_without_compiling_again(
    packages: Path, photo: torch.Tensor, reference: torch.Tensor
) -> None:
    """One package serves every tile: other sides, non-square ones, and a batch (run one
    tile at a time, each keeping the batch's layout). A compiled network that compiled
    again for a new shape would do it in the middle of a job, minutes on 2 cores."""
    engine = tiny_engine(packages, "inductor", torch.float32)
    package = next((packages / "compiled").glob("*float32*.pt2"))
    built = package.stat().st_mtime_ns
    eager = tiny_engine(packages, "eager", torch.float32)

    batch = torch.cat([photo, photo.flip(-1), photo.flip(-2)])
    for tiles in (batch, photo[..., :20, :20], photo[..., :, :17]):
        out = engine.run(tiles)
        assert (out - eager.run(tiles)).abs().max() <= LSB
    assert engine.compiled and package.stat().st_mtime_ns == built
    assert list((packages / "compiled").glob("*float32*.pt2")) == [package]


def test_auto_runs_eager_unless_a_package_exists_and_the_cpu_prefers_it() -> None:
    assert resolve_backend("auto", CPU) == "eager"  # never waits for a compile
    assert resolve_backend("auto", CPU, compiled=True) == "inductor"
    assert resolve_backend("auto", CPU, compiled=True, measured="eager") == "eager"
    assert resolve_backend("auto", torch.device("cuda"), compiled=True) == "eager"
    assert resolve_backend("eager", CPU, compiled=True) == "eager"
    assert resolve_backend("inductor", CPU) == "inductor"  # g++ is on our machines
    assert compiles_in_background("auto", CPU)
    assert not compiles_in_background("auto", CPU, measured="eager")
    assert not compiles_in_background("eager", CPU)
    with pytest.raises(ValueError, match="unknown backend 'tvm'"):
        resolve_backend("tvm", CPU)


@pytest.mark.usefixtures("one_torch_thread")
def test_auto_uses_a_package_built_before_and_a_one_off_never_compiles(
    tmp_path: Path, packages: Path, photo: torch.Tensor, reference: torch.Tensor
) -> None:
    fresh = tiny_engine(tmp_path, "auto", torch.float32)  # a one-off command, no package
    assert (fresh.backend, fresh.compiled, fresh.background) == ("eager", False, None)
    assert not (tmp_path / "compiled").exists()
    assert torch.equal(fresh.run(photo), reference)

    tiny_engine(packages, "inductor", torch.float32)  # built once (or by a test above)
    warm = tiny_engine(packages, "auto", torch.float32)
    assert (warm.backend, warm.compiled) == ("inductor", True)
    assert (warm.run(photo) - reference).abs().max() <= LSB


@pytest.mark.usefixtures("one_torch_thread")
def test_a_serving_engine_compiles_in_the_background_and_swaps_between_calls(
    packages: Path, photo: torch.Tensor, reference: torch.Tensor, caplog: pytest.LogCaptureFixture
) -> None:
    """``warmup`` (what the worker calls) leaves the engine eager and building; a call
    after the build ends runs compiled. Waiting on the build here stands for the calls a
    worker keeps serving meanwhile (tests/test_background_compile.py serves them)."""
    engine = TinyRealESRGAN(Settings(cache_dir=packages / "serving", backend="auto", tile=32))
    engine.load(CPU, torch.float32)
    with caplog.at_level(logging.INFO, logger=ENGINE_LOGGER):
        engine.warmup()
        assert engine.backend == "eager" and engine.background is not None
        assert torch.equal(engine.run(photo), reference)  # eager while it builds
        assert engine.background.wait()
        out = engine.run(photo)

    assert (engine.backend, engine.compiled, engine.background) == ("inductor", True, None)
    assert (out - reference).abs().max() <= LSB
    messages = [r.getMessage() for r in caplog.records]
    assert any("compiling float32 with inductor in the background" in m for m in messages)
    assert any("inductor ready after" in m and "swapped in" in m for m in messages)


NO_COMPILER = {"cpp.cxx": ("/nonexistent/c++",)}


@pytest.fixture
def no_compiler() -> Iterator[None]:
    """Inductor's compiler search sees only a path that does not exist, as on a slim image
    without g++ (the real search, on a real missing file)."""
    with inductor_config.patch(NO_COMPILER):
        yield


@pytest.mark.usefixtures("no_compiler")
def test_inductor_without_a_compiler_falls_back_to_eager_and_says_why(
    tmp_path: Path,
    photo: torch.Tensor,
    reference: torch.Tensor,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger=BACKENDS_LOGGER):
        engine = tiny_engine(tmp_path, "inductor", torch.float32)
        quiet_auto = compiles_in_background("auto", CPU)

    assert engine.backend == "eager" and not engine.compiled
    assert not quiet_auto
    [message] = [r.getMessage() for r in caplog.records]  # auto falls back without a word
    assert message.startswith("backend inductor unavailable, running eager: ")
    assert "/nonexistent/c++" in message
    assert torch.equal(engine.run(photo), reference)


def failing_build(network: torch.nn.Module, dtype: torch.dtype, path: Path, threads: int) -> None:
    """A compile that fails in its process (a compiler that cannot build oneDNN's headers,
    a full disk), which the availability check at load cannot foresee."""
    raise RuntimeError("C++ compile failed: no space left on device")


class BrokenCompiler(TinyRealESRGAN):
    def _start_build(self) -> PackageBuild:
        return PackageBuild(self._package, self.network, self.dtype, target=failing_build)


@pytest.mark.usefixtures("one_torch_thread")
def test_a_compile_that_fails_leaves_the_engine_eager_and_says_why(
    tmp_path: Path, photo: torch.Tensor, reference: torch.Tensor, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        asked = BrokenCompiler(Settings(cache_dir=tmp_path, backend="inductor", tile=32))
        asked.load(CPU, torch.float32)
        serving = BrokenCompiler(Settings(cache_dir=tmp_path, backend="auto", tile=32))
        serving.load(CPU, torch.float32)
        serving.warmup()
        assert not serving.background.wait()
        out = serving.run(photo)  # takes the failure in, and stays eager

    assert (asked.backend, serving.backend) == ("eager", "eager")
    assert torch.equal(out, reference) and serving.background is None
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "backend inductor unavailable, running eager: the compile exited with status 1",
        "tiny-realesrgan: the compile exited with status 1; staying eager",
    ]


def test_packages_are_per_weights_dtype_and_thread_count(tmp_path: Path) -> None:
    engine = tiny_engine(tmp_path, "auto", torch.float32)
    net = engine.network
    paths = {package_path(tmp_path, net, dtype) for dtype in (torch.float32, torch.bfloat16)}
    threads = torch.get_num_threads()
    torch.set_num_threads(threads + 1)
    try:
        paths.add(package_path(tmp_path, net, torch.float32))
    finally:
        torch.set_num_threads(threads)
    with torch.no_grad():
        next(net.parameters()).add_(1.0)
    paths.add(package_path(tmp_path, net, torch.float32))
    assert len(paths) == 4
    assert all(p.parent == tmp_path / "compiled" and p.suffix == ".pt2" for p in paths)


def test_the_compile_cache_goes_under_the_cache_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "restored afterwards")
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    tiny_engine(tmp_path, "auto", torch.float32)

    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "inductor")
