"""This CPU's calibrated choice (dtype, tile, backend): measured, cached, used, redone.

The calibration runs for real: on the tiny network of :mod:`tiny_realesrgan` for the
library call, on the x4plus weights with small tiles for ``megasr bench --calibrate``;
eager only (the compile is :mod:`test_backends`'s subject).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import pytest
import torch
from tiny_realesrgan import TinyRealESRGAN

from megasr.cli.main import main
from megasr.model.benchmark.calibration import Calibration, calibrate
from megasr.model.device import cpu_has_native_bf16
from megasr.model.engines.cpu_choice import CpuChoice, choice_path, load_choice, save_choice
from megasr.model.engines.registry import load_engine
from megasr.settings import Settings

CPU = torch.device("cpu")
EAGER_ONLY = Calibration(tiles=(16, 24, 32), backends=("eager",), repeats=1)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny(cache_dir: Path, **settings: object) -> TinyRealESRGAN:
    engine = TinyRealESRGAN(Settings(cache_dir=cache_dir, **settings))
    engine.load(CPU)
    return engine


def test_a_calibration_is_cached_and_the_engine_runs_with_it(tmp_path: Path) -> None:
    messages: list[str] = []
    choice = calibrate(Settings(cache_dir=tmp_path), EAGER_ONLY, TinyRealESRGAN, messages.append)

    assert choice.engine == "tiny-realesrgan" and choice.backend == "eager"
    assert choice.tile in (16, 24, 32) and choice.overlap == choice.tile // 4
    assert choice.dtype in ("float32", "bfloat16")
    if choice.dtype == "bfloat16":  # only where it is native here, faster and close enough
        assert cpu_has_native_bf16()
        assert choice.measured["bfloat16 PSNR vs float32, dB"] >= 45
    assert {f"tile {side} px, s per output MP" for side in (16, 24, 32)} <= set(choice.measured)
    assert messages[-1] == "backend: eager"
    assert load_choice(tmp_path, choice.engine) == choice

    engine = tiny(tmp_path)
    assert (engine.tile_spec.size, engine.tile_spec.overlap) == (choice.tile, choice.overlap)
    assert engine.dtype == choice.torch_dtype and engine.backend == "eager"


def test_the_cached_choice_is_what_loads_and_explicit_settings_win(tmp_path: Path) -> None:
    """A choice written by hand stands for one another machine would measure."""
    save_choice(tmp_path, CpuChoice("tiny-realesrgan", 40, 6, "float32", "eager"))

    engine = tiny(tmp_path)
    assert (engine.tile_spec.size, engine.tile_spec.overlap, engine.dtype) == (
        40,
        6,
        torch.float32,
    )
    assert engine.tile_spec.whole_up_to == 320  # a small image still runs as one tile
    explicit = tiny(tmp_path, tile=24)
    assert (explicit.tile_spec.size, explicit.tile_spec.overlap) == (24, 6)
    assert explicit.tile_spec.whole_up_to == 40  # a tile asked for bounds memory too
    forced = TinyRealESRGAN(Settings(cache_dir=tmp_path))
    forced.load(CPU, torch.bfloat16)  # MEGASR_DTYPE named: the pool passes it
    assert forced.dtype == torch.bfloat16


def test_a_damaged_choice_is_ignored_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = save_choice(tmp_path, CpuChoice("tiny-realesrgan", 40, 6, "float32", "eager"))
    path.write_text('{"engine": "tiny-realesrgan", "tile": "large"}')

    with caplog.at_level(logging.WARNING):
        engine = tiny(tmp_path)

    assert engine.tile_spec.size == 192  # the default
    assert any("ignoring the CPU choice" in r.getMessage() for r in caplog.records)


def test_the_choice_is_per_isa_cap_and_thread_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = {choice_path(tmp_path, "realesrgan-x4plus")}
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    paths.add(choice_path(tmp_path, "realesrgan-x4plus"))
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    paths.add(choice_path(tmp_path, "realesrgan-x4plus"))
    torch.set_num_threads(2)  # the module's fixture restores one thread after the module
    paths.add(choice_path(tmp_path, "realesrgan-x4plus"))
    torch.set_num_threads(1)
    assert len(paths) == 4


def test_megasr_bench_calibrate_caches_a_choice_the_engine_uses_and_redoes_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEGASR_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("MEGASR_CPU_THREADS", "1")
    command = ["bench", "--calibrate", "--quiet", "--tiles", "24,32", "--backend", "eager"]
    assert main([*command, "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    path = choice_path(tmp_path, "realesrgan-x4plus")
    assert f"cached in {path}" in out and "tile 24 px, s per output MP" in out
    first = load_choice(tmp_path, "realesrgan-x4plus")
    assert first is not None and first.tile in (24, 32)
    assert f"chosen: {first.dtype}, {first.tile} px tiles" in out

    settings = Settings(cache_dir=tmp_path, backend="auto")
    assert load_engine("auto", settings).tile_spec.size == first.tile

    stale = dataclasses.replace(first, tile=48, measured={})
    path.write_text(json.dumps(dataclasses.asdict(stale)))
    assert load_engine("auto", settings).tile_spec.size == 48  # what is cached is used
    assert main([*command, "--repeats", "1"]) == 0  # redone: measured again, replaced
    redone = load_choice(tmp_path, "realesrgan-x4plus")
    assert redone is not None and redone.tile in (24, 32) and redone.measured


def test_calibrate_refuses_bad_tile_sides(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--calibrate", "--tiles", "0,32"]) != 0
    assert "--tiles takes sides of 1 or more" in capsys.readouterr().err
