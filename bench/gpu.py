"""Device benchmark in one bounded run: the default engine and full-size MegaSR on one GPU.

1. The card's bfloat16 matmul peak, measured (8192^3 matmuls): the yardstick below.
2. Real-ESRGAN x4plus (the default engine, as the service runs it: 192-pixel tiles with the
   engine's reflect padding): output megapixels per second by batch size and dtype
   (float32 = cuDNN's default TF32 convolutions; bfloat16 and float16 = autocast,
   channels-last), FLOPs per tile, achieved TFLOP/s and their fraction of the peak.
3. Full-size MegaSR (SD-2-base U-Net + ControlNet with CSM and MSFM, random bfloat16
   weights from ``bench/megasr_gpu.py``'s builders): milliseconds per guided denoising step
   by batch size, FLOPs per step counted, TFLOP/s and fraction of the peak.

Everything stays inside ``--budget-s`` (8 minutes): what no longer fits is reported skipped.
Without CUDA it stops at once and says so.

    python bench/gpu.py [--budget-s 480] [--engine-batches 1 2 4 8 16] [--megasr-batches 1 2 4 8]
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from megasr.model.benchmark.flops import achieved_tflops, count_flops, matmul_peak_tflops
from megasr.model.benchmark.runners import engine_runners
from megasr.model.benchmark.timing import measure
from megasr.model.engines.realesrgan import DEFAULT_TILE, RealESRGANEngine
from megasr.settings import Settings

ENGINE_DTYPES = ["float32", "bfloat16", "float16"]
REPEATS = 3
GIB = 2**30


class Budget:
    """The wall-clock allowance of the whole run."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.start = time.monotonic()

    def spent(self) -> bool:
        return time.monotonic() - self.start > self.seconds

    def elapsed(self) -> float:
        return time.monotonic() - self.start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-s", type=float, default=480.0)
    parser.add_argument("--engine-batches", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--megasr-batches", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--steps", type=int, default=10, help="timed MegaSR steps per batch")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print(
            "bench/gpu.py needs a CUDA GPU and found none; nothing was measured.", file=sys.stderr
        )
        return 2
    budget = Budget(args.budget_s)
    device = torch.device("cuda")
    peak = matmul_peak_tflops(device)
    name = torch.cuda.get_device_name(device)
    print(f"- GPU: {name}; torch {torch.__version__}, CUDA {torch.version.cuda}")
    print(f"- measured bfloat16 matmul peak: {peak:.0f} TFLOP/s")
    print(f"- float32 convolutions may use TF32: {torch.backends.cudnn.allow_tf32}")
    print()
    engine_table(device, args.engine_batches, peak, budget)
    print()
    megasr_table(device, args.megasr_batches, args.steps, peak, budget)
    print(f"\ntotal {budget.elapsed():.0f} s")
    return 0


def engine_table(device: torch.device, batches: list[int], peak: float, budget: Budget) -> None:
    side = DEFAULT_TILE
    out = side * RealESRGANEngine.native_scale
    tile = torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(0))
    print(f"Real-ESRGAN x4plus, {side}x{side} tiles -> {out}x{out}:")
    print()
    print("| dtype | batch | ms / batch | output MP/s | TFLOP/s | of bf16 peak | peak GiB |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    settings = Settings(tile=side)
    flops = None
    for runner in engine_runners(RealESRGANEngine.name, settings, device, ENGINE_DTYPES):
        if flops is None:
            flops = count_flops(lambda r=runner: r.run(tile))
        for batch in batches:
            if budget.spent():
                print(f"| {runner.precision} | {batch} | skipped: budget spent | | | | |")
                continue
            tiles = tile.expand(batch, -1, -1, -1).contiguous()
            m, _ = measure(runner, tiles, REPEATS)
            tflops = achieved_tflops(flops * batch, m.seconds)
            print(
                f"| {runner.precision} | {batch} | {m.seconds * 1e3:.1f} "
                f"| {m.tiles_per_second * out * out / 1e6:.1f} | {tflops:.1f} "
                f"| {tflops / peak:.1%} | {(m.peak_memory_bytes or 0) / GIB:.2f} |"
            )
    print()
    print(f"FLOPs per tile (padded to {side + 20}x{side + 20}): {flops / 1e9:.1f} G")


def megasr_table(
    device: torch.device, batches: list[int], steps: int, peak: float, budget: Budget
) -> None:
    import megasr_gpu  # bench/megasr_gpu.py, beside this script: the full-size model builders

    dtype = torch.bfloat16
    model = megasr_gpu.build_model(device, dtype)
    flops = megasr_gpu.flops_per_sample(model, device, dtype)
    print("Full-size MegaSR, one guided denoising step (2 samples per tile: CFG), bfloat16:")
    print()
    print(f"FLOPs per 512-pixel sample: {flops / 1e12:.2f} T")
    print()
    print("| batch (tiles) | ms / step | ms / tile | TFLOP/s | of bf16 peak | peak GiB |")
    print("|---:|---:|---:|---:|---:|---:|")
    for batch in batches:
        if budget.spent():
            print(f"| {batch} | skipped: budget spent | | | | |")
            continue
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        ms = megasr_gpu.time_steps(model, megasr_gpu.step_inputs(batch, device, dtype), steps)
        tflops = achieved_tflops(2 * batch * flops, ms / 1e3)
        memory = torch.cuda.max_memory_allocated(device) / GIB
        print(
            f"| {batch} | {ms:.1f} | {ms / batch:.1f} | {tflops:.0f} | {tflops / peak:.1%} "
            f"| {memory:.2f} |"
        )


if __name__ == "__main__":
    sys.exit(main())
