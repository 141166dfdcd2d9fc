"""The MegaSR tiny preset against the default engine, as a user runs them, in one run.

A 320x240 photograph (scikit-image's coffee, resized) is upscaled x4 by ``megasr upscale``
twice per round: once with the default engine (``realesrgan-x4plus``) and once with
``--engine megasr`` on a fresh ``megasr model init --preset tiny`` checkpoint. Each is a
whole process (start-up, imports, weights, the image, the file written), the two taking turns
so that a burst of other work on a shared machine slows one run of each rather than all runs
of one. The median of each and their ratio are printed with the machine and the load average
before and after; docs/benchmarks.md records the figures.

    .venv/bin/python bench/tiny_preset_speed.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from skimage import data

from megasr.model.benchmark.machine import describe_machine, load_average

SIZE = (320, 240)


def megasr_command() -> list[str]:
    return [sys.executable, "-m", "megasr.cli.main"]


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="runs of each engine")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        photo = work / "photo.png"
        Image.fromarray(data.coffee()).resize(SIZE, Image.Resampling.LANCZOS).save(photo)
        checkpoint = work / "tiny"
        init = [*megasr_command(), "model", "init", "--preset", "tiny", "--out", str(checkpoint)]
        subprocess.run(init, check=True, capture_output=True)
        runs = {
            "realesrgan-x4plus": [*megasr_command(), "upscale", str(photo), "-o",
                                  str(work / "gan.png"), "--quiet"],
            "megasr tiny": [*megasr_command(), "upscale", str(photo), "-o", str(work / "tiny.png"),
                            "--engine", "megasr", "--model", str(checkpoint), "--quiet"],
        }  # fmt: skip
        load_before = load_average()
        seconds: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.rounds):
            for name, command in runs.items():
                seconds[name].append(timed(command))
        load_after = load_average()
        sizes = {name: Image.open(work / f).size for name, f in
                 (("realesrgan-x4plus", "gan.png"), ("megasr tiny", "tiny.png"))}  # fmt: skip
        pixels = np.asarray(Image.open(work / "tiny.png"), dtype=np.float32)
    medians = {name: statistics.median(times) for name, times in seconds.items()}
    report = {
        "machine": describe_machine(torch.device("cpu")),
        "threads_env": os.environ.get("OMP_NUM_THREADS", "unset"),
        "load_average_before": load_before,
        "load_average_after": load_after,
        "input": f"{SIZE[0]}x{SIZE[1]} coffee (scikit-image), x4",
        "output_sizes": {name: f"{w}x{h}" for name, (w, h) in sizes.items()},
        "seconds": {name: [round(t, 1) for t in times] for name, times in seconds.items()},
        "median_s": {name: round(t, 1) for name, t in medians.items()},
        "tiny_over_default": round(medians["megasr tiny"] / medians["realesrgan-x4plus"], 2),
        "tiny_output_std": round(float(pixels.std()), 1),
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
