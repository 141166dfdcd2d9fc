"""Peak memory of the tile path at a scale below the engine's x4: blending at native scale
(then resizing the whole image, as the worker and the CLI did before) against blending
straight into the output size (``TileAccumulator(..., size)``, what they do now).

Each run is a fresh child process that builds an input of ``--megapixels`` from scikit-image's
coffee photograph, cuts it into the tiles of the default engine (192 px, 32 px overlap), runs
them through a stand-in x4 engine (bicubic interpolation, so the engine itself costs no
memory and little time) in batches of 8, blends them and resizes to ``--scale``; it reports
its peak resident memory (``ru_maxrss``) and seconds. ``--cap-gib`` sets an address-space
limit on each child, so a run that would exhaust a shared machine stops with a MemoryError
instead (reported as such).

    .venv/bin/python bench/tile_memory.py --megapixels 10 40 --scale 1 --cap-gib 9
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

MODES = ("native", "output")  # before, after


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megapixels", type=float, nargs="+", default=[10.0, 40.0])
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--cap-gib", type=float, default=None, help="address-space limit")
    parser.add_argument("--child", nargs=3, metavar=("MODE", "MP", "SCALE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, megapixels, scale = args.child
        print(json.dumps(run_child(mode, float(megapixels), float(scale))))
        return
    from megasr.model.benchmark.machine import cpu_model, load_average

    print(f"Machine: {cpu_model()}, load average {load_average()}")
    print()
    print("| input | scale | blended at | peak RSS | seconds |")
    print("|---|---:|---|---:|---:|")
    for megapixels in args.megapixels:
        for mode in MODES:
            result = measure(mode, megapixels, args.scale, args.cap_gib)
            peak = result.get("error") or f"{result['peak_rss_mib'] / 1024:.2f} GiB"
            seconds = f"{result['seconds']:.1f}" if "seconds" in result else ""
            label = "native x4, then resize" if mode == "native" else "the output size"
            print(f"| {result['input']} | {args.scale:g} | {label} | {peak} | {seconds} |")
    print(f"\nLoad average after: {load_average()}")


def measure(mode: str, megapixels: float, scale: float, cap_gib: float | None) -> dict:
    """One run in a child process (so each peak is its own)."""

    def limit() -> None:
        if cap_gib is not None:
            cap = int(cap_gib * 2**30)
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    command = [sys.executable, __file__, "--child", mode, str(megapixels), str(scale)]
    done = subprocess.run(command, capture_output=True, text=True, preexec_fn=limit)
    if done.returncode != 0:
        side = int((megapixels * 1e6) ** 0.5)
        out_of_memory = "MemoryError" in done.stderr or "alloc" in done.stderr
        reason = f"out of memory at the {cap_gib:g} GiB cap" if out_of_memory else "failed"
        return {"input": f"~{side}x{side}", "error": reason}
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_child(mode: str, megapixels: float, scale: float) -> dict:
    import numpy as np
    import torch
    import torch.nn.functional as F
    from skimage import data

    from megasr.imaging.image import DecodedImage
    from megasr.imaging.sizing import OutputSize
    from megasr.model.engines.base import TileSpec
    from megasr.model.tiler import TileAccumulator
    from megasr.model.upscaler import cut_tiles, finish_image

    torch.set_num_threads(2)
    coffee = data.coffee()  # 400 x 600
    height = int((megapixels * 1e6 * 2 / 3) ** 0.5)
    width = int(height * 1.5)
    reps = (-(-height // coffee.shape[0]), -(-width // coffee.shape[1]), 1)
    rgb = np.tile(coffee, reps)[:height, :width].astype(np.float32) / 255
    image = DecodedImage(rgb=rgb, alpha=None, source_format="png", bit_depth=8, grayscale=False)
    out_width, out_height = OutputSize(scale=scale).resolve(width, height, None)

    started = time.perf_counter()
    tiles, layout = cut_tiles(image, TileSpec(size=192, overlap=32))
    del rgb
    size = None if mode == "native" else (out_height, out_width)
    accumulator = TileAccumulator(layout, 4, size)
    with torch.inference_mode():
        for first in range(0, len(tiles), 8):
            batch = F.interpolate(tiles[first : first + 8], scale_factor=4, mode="bicubic")
            accumulator.add(first, batch.clamp_(0, 1))
    result = finish_image(accumulator.result(), image, out_width, out_height)
    seconds = time.perf_counter() - started
    assert result.rgb.shape == (out_height, out_width, 3)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "input": f"{width}x{height}",
        "output": f"{out_width}x{out_height}",
        "peak_rss_mib": peak_kib / 1024,
        "seconds": seconds,
    }


if __name__ == "__main__":
    main()
