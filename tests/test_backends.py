"""The engine backends (eager, inductor) against float32 eager, and their fallbacks.

The engine's own code runs here, on a tiny RRDBNet with the x4plus structure (2 blocks of
16 features instead of 23 of 64), so that inductor compiles in seconds rather than the
minute the full network takes on 2 cores. The full network's figures per backend are in
docs/benchmarks.md (``bench/cpu_speed.py``).
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

from megasr.model.engines.backends import resolve_backend
from megasr.model.engines.realesrgan import RealESRGANEngine
from megasr.model.nets.rrdbnet import RRDBNet
from megasr.settings import Settings

CPU = torch.device("cpu")
LSB = 1 / 255
BACKENDS_LOGGER = "megasr.model.engines.backends"


class TinyRealESRGAN(RealESRGANEngine):
    """The engine on a seeded tiny RRDBNet, its weights scaled up so that the features
    reach the range of the real network's (a fresh init keeps them near zero)."""

    def _load_network(self) -> RRDBNet:
        torch.manual_seed(0)
        net = RRDBNet(num_feat=16, num_block=2, num_grow_ch=8)
        with torch.no_grad():
            for param in net.parameters():
                param.mul_(2.0)
        return net


def tiny_engine(cache_dir: Path, backend: str, dtype: torch.dtype) -> TinyRealESRGAN:
    engine = TinyRealESRGAN(Settings(cache_dir=cache_dir, backend=backend, tile=32))
    engine.load(CPU, dtype)
    return engine


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1 / torch.mean((a - b) ** 2)))


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
    tmp_path: Path,
    photo: torch.Tensor,
    reference: torch.Tensor,
    backend: str,
    dtype: torch.dtype,
    max_lsb: float | None,
    min_psnr: float | None,
) -> None:
    engine = tiny_engine(tmp_path, backend, dtype)
    out = engine.run(photo)

    assert engine.backend == backend and engine.compiled == (backend == "inductor")
    assert out.shape == reference.shape == (1, 3, 96, 96)
    if max_lsb is not None:
        assert (out - reference).abs().max() <= max_lsb * LSB
    if min_psnr is not None:
        assert psnr(out, reference) >= min_psnr
        assert not torch.equal(out, reference)  # it did run in reduced precision


def test_auto_compiles_only_an_engine_that_serves_on_a_cpu() -> None:
    assert resolve_backend("auto", CPU, serving=True) == "inductor"  # g++ is on our machines
    assert resolve_backend("auto", CPU) == "eager"  # a one-off command: no compile
    assert resolve_backend("auto", torch.device("cuda"), serving=True) == "eager"
    assert resolve_backend("eager", CPU, serving=True) == "eager"
    assert resolve_backend("inductor", CPU) == "inductor"
    with pytest.raises(ValueError, match="unknown backend 'tvm'"):
        resolve_backend("tvm", CPU)


@pytest.mark.usefixtures("one_torch_thread")
def test_auto_runs_eager_until_the_warmup_compiles_it(
    tmp_path: Path, photo: torch.Tensor, reference: torch.Tensor
) -> None:
    engine = tiny_engine(tmp_path, "auto", torch.float32)
    assert (engine.backend, engine.compiled) == ("eager", False)
    assert torch.equal(engine.run(photo), reference)

    engine.warmup()  # what the worker does before it takes jobs

    assert (engine.backend, engine.compiled) == ("inductor", True)
    assert (engine.run(photo) - reference).abs().max() <= LSB
    assert engine.run(photo[..., :20, :20]).shape == (1, 3, 80, 80)  # any size, one compile
    assert engine.compiled


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
        quiet_auto = resolve_backend("auto", CPU)

    assert engine.backend == "eager" and not engine.compiled
    assert quiet_auto == "eager"
    [message] = [r.getMessage() for r in caplog.records]  # auto falls back without a word
    assert message.startswith("backend inductor unavailable, running eager: ")
    assert "/nonexistent/c++" in message
    assert torch.equal(engine.run(photo), reference)


@pytest.mark.usefixtures("one_torch_thread")
def test_a_compile_that_fails_on_first_use_falls_back_to_eager(
    tmp_path: Path, photo: torch.Tensor, caplog: pytest.LogCaptureFixture
) -> None:
    engine = tiny_engine(tmp_path, "inductor", torch.float16)
    assert engine.compiled
    # A dtype no other test compiled (every size shares one dynamic compile), and no
    # on-disk cache: the compile must call the compiler, gone missing since the check at load.
    crop = photo[..., :20, :20]
    with (
        inductor_config.patch({**NO_COMPILER, "fx_graph_cache": False}),
        caplog.at_level(logging.WARNING, logger=BACKENDS_LOGGER),
    ):
        out = engine.run(crop)

    assert not engine.compiled
    assert torch.equal(out, tiny_engine(tmp_path, "eager", torch.float16).run(crop))
    [message] = [r.getMessage() for r in caplog.records]
    assert message.startswith("inductor failed to compile, running eager from now on: ")
    assert "No working C++ compiler" in message
    engine.run(crop)  # and stays eager, without another word
    assert len(caplog.records) == 1


def test_the_compile_cache_goes_under_the_cache_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "restored afterwards")
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    tiny_engine(tmp_path, "inductor", torch.float32)

    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "inductor")
