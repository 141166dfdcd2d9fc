"""Measure this CPU and choose the dtype, tile and backend the default engine runs with.

``megasr bench --calibrate`` runs it (again whenever asked: the new choice replaces the
old); engines read the result when they load (:mod:`megasr.model.engines.cpu_choice`).

1. **dtype**: float32 against bfloat16 (where oneDNN has bfloat16 convolutions under the
   ISA cap in force) on one tile of a photograph; bfloat16 is kept only if it is faster and
   its output stays within 45 dB PSNR of float32's.
2. **tile**: each candidate side in the chosen dtype, eager; what counts is the time of a
   whole image, not of a tile: a tile's pad and its overlap with its neighbours are
   computed again by every tile, so small tiles repeat more work, and large ones may spill
   out of the caches. The cost of a candidate is its tile time times the tiles it cuts
   512, 1024 and 2048-pixel images into (the engine's own layout), per output pixel.
3. **backend**: eager against inductor's compiled package on the chosen tile, where
   inductor can compile here (the compile, minutes on 2 cores, is cached for every later
   process, so the worker and one-off commands then load it at once).

Every candidate's timing is the best of ``repeats`` calls taken in turns with the others
(on a shared machine, a burst of other work then slows one call of each, not all calls of
one), after one warm-up call each.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from skimage import data

from megasr.model.cpu_isa import describe_isa
from megasr.model.device import cpu_has_native_bf16
from megasr.model.engines.backends import inductor_unavailable
from megasr.model.engines.base import TileEngine
from megasr.model.engines.cpu_choice import CpuChoice, save_choice
from megasr.model.engines.realesrgan import RealESRGANEngine, tile_spec_for
from megasr.model.quality.psnr import psnr
from megasr.model.upscaler import plan_image_tiles
from megasr.settings import Settings

CPU = torch.device("cpu")
DEFAULT_TILES = (128, 192, 256, 384)
DTYPE_TILE = 192  # the tile the dtypes and backends are compared on (at most the largest)
IMAGE_SIDES = (512, 1024, 2048)
MIN_PSNR_DB = 45.0

EngineFactory = Callable[[Settings], RealESRGANEngine]


@dataclass(frozen=True)
class Calibration:
    """What to try: tile sides, backends (``eager``, ``inductor``), timed calls each."""

    tiles: tuple[int, ...] = DEFAULT_TILES
    backends: tuple[str, ...] = ("eager", "inductor")
    repeats: int = 3


def calibrate(
    settings: Settings,
    calibration: Calibration = Calibration(),
    factory: EngineFactory = RealESRGANEngine,
    progress: Callable[[str], None] = lambda message: None,
) -> CpuChoice:
    """Measure, choose, save under ``settings.cache_dir``, and return the choice."""
    measured: dict[str, float] = {}
    dtype_tile = min(DTYPE_TILE, max(calibration.tiles))
    photo = photo_tile(max(calibration.tiles))
    dtype = choose_dtype(settings, factory, photo[..., :dtype_tile, :dtype_tile], calibration)
    measured.update(dtype.measured)
    progress(f"dtype: {dtype.choice}")
    engine = loaded(factory, settings, "eager", dtype.choice)
    tile = choose_tile(engine, photo, calibration)
    measured.update(tile.measured)
    progress(f"tile: {tile.choice} px")
    backend = "eager"
    if "inductor" in calibration.backends and inductor_unavailable(CPU) is None:
        progress("compiling with inductor to compare backends (once per machine: minutes)")
        compiled = loaded(factory, settings, "inductor", dtype.choice)
        crop = photo[..., : tile.choice, : tile.choice]
        timings = best_in_turns({"eager": engine.run, "inductor": compiled.run}, crop, calibration)
        measured.update({f"{name} {tile.choice} px tile, s": s for name, s in timings.items()})
        backend = min(timings, key=timings.__getitem__) if compiled.compiled else "eager"
    progress(f"backend: {backend}")
    choice = CpuChoice(
        engine=engine.name,
        tile=tile.choice,
        overlap=tile_spec_for(tile.choice).overlap,
        dtype=str(dtype.choice).removeprefix("torch."),
        backend=backend,
        isa=describe_isa(),
        measured=measured,
    )
    save_choice(settings.cache_dir, choice)
    return choice


@dataclass(frozen=True)
class Chosen:
    choice: object
    measured: dict[str, float]


def choose_dtype(
    settings: Settings, factory: EngineFactory, tile: torch.Tensor, calibration: Calibration
) -> Chosen:
    """float32, or bfloat16 where it is native here, faster and within the PSNR bar."""
    float32 = loaded(factory, settings, "eager", torch.float32)
    if not cpu_has_native_bf16():
        return Chosen(torch.float32, {})
    bfloat16 = loaded(factory, settings, "eager", torch.bfloat16)
    side = tile.shape[-1]
    runs = {"float32": float32.run, "bfloat16": bfloat16.run}
    timings = best_in_turns(runs, tile, calibration)
    quality = psnr(hwc(bfloat16.run(tile)), hwc(float32.run(tile)), y_channel=False)
    measured = {f"{name} {side} px tile, s": s for name, s in timings.items()}
    measured["bfloat16 PSNR vs float32, dB"] = quality
    faster = timings["bfloat16"] < timings["float32"]
    return Chosen(torch.bfloat16 if faster and quality >= MIN_PSNR_DB else torch.float32, measured)


def choose_tile(engine: TileEngine, photo: torch.Tensor, calibration: Calibration) -> Chosen:
    """The tile side with the least time per output pixel over whole images."""
    runs = {str(side): engine.run for side in calibration.tiles}
    crops = {str(side): photo[..., :side, :side] for side in calibration.tiles}
    timings = best_in_turns(runs, crops, calibration)
    costs = {int(side): image_seconds_per_megapixel(int(side), s) for side, s in timings.items()}
    measured = {f"tile {side} px, s per output MP": cost for side, cost in costs.items()}
    return Chosen(min(costs, key=costs.__getitem__), measured)


def image_seconds_per_megapixel(tile: int, tile_seconds: float) -> float:
    """Seconds per output megapixel of whole images cut into ``tile``-pixel tiles."""
    spec = tile_spec_for(tile)
    tiles = sum(len(plan_image_tiles(side, side, spec, fit=True)) for side in IMAGE_SIDES)
    output_megapixels = sum((4 * side) ** 2 for side in IMAGE_SIDES) / 1e6
    return tiles * tile_seconds / output_megapixels


def best_in_turns(
    runs: dict[str, Callable[[torch.Tensor], torch.Tensor]],
    tiles: torch.Tensor | dict[str, torch.Tensor],
    calibration: Calibration,
) -> dict[str, float]:
    """The best of ``repeats`` timed calls of each run, the runs taking turns."""

    def tile_of(name: str) -> torch.Tensor:
        return tiles[name] if isinstance(tiles, dict) else tiles

    for name, run in runs.items():
        run(tile_of(name))  # warm-up: kernels picked, buffers grown
    best = dict.fromkeys(runs, math.inf)
    for _ in range(calibration.repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run(tile_of(name))
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def hwc(tiles: torch.Tensor) -> np.ndarray:
    """The first tile of a (N, 3, H, W) batch as an (H, W, 3) float image in [0, 1]."""
    return tiles[0].permute(1, 2, 0).numpy()


def loaded(
    factory: EngineFactory, settings: Settings, backend: str, dtype: torch.dtype
) -> RealESRGANEngine:
    engine = factory(settings.model_copy(update={"backend": backend, "tile": DTYPE_TILE}))
    engine.load(CPU, dtype)
    return engine


def photo_tile(side: int) -> torch.Tensor:
    """A ``side`` square of scikit-image's astronaut (mirrored past its 512 pixels), as a
    (1, 3, side, side) float tile: real texture, the same on every machine."""
    photo = data.astronaut()
    reps = math.ceil(side / photo.shape[0])
    tiled = np.pad(photo, ((0, (reps - 1) * 512), (0, (reps - 1) * 512), (0, 0)), "symmetric")
    crop = np.ascontiguousarray(tiled[:side, :side])
    return torch.from_numpy(crop).permute(2, 0, 1)[None].float() / 255
