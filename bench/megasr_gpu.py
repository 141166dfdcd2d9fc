"""GPU benchmark of full-size MegaSR: parameters, peak memory, milliseconds per denoising step.

Builds SD-2-base-size MegaSR (U-Net, ControlNet, CSM + MSFM in every attention block) with
random weights in bfloat16, configurations in code, no downloads. One denoising step is one
forward of U-Net + ControlNet with classifier-free guidance (so a batch of N 64x64 latent
tiles, 512 px each, runs 2N samples), the pipeline's unit of work. Batches 1, 2, 4, 8: eager
without the step cache (every step computes the MSFM modulation and the Connectors' image tokens),
eager with it (the sampler's steady state), and under ``torch.compile``; the whole run stays
within ``--budget-s`` (8 minutes by default), skipping what no longer fits. Host-to-device
traffic of the sampling loop is measured by ``bench/megasr_sampling.py``'s counter when run with
``--device cuda``.

    python bench/megasr_gpu.py [--batches 1 2 4 8] [--steps 10] [--budget-s 480]
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from megasr.model.megasr.adapter import is_adapter_key
from megasr.model.megasr.conditions import MegaSRConditions, StepCache
from megasr.model.megasr.csm import CSM
from megasr.model.megasr.denoiser import MegaSRDenoiser
from megasr.model.megasr.msfm import MSFM
from megasr.model.megasr.presets import SD2_BASE_MODULES, SD2_BASE_UNET, sd2_base_denoiser

LATENT = 64
TEXT_TOKENS = 77
IMAGE_TOKENS = 257  # CLIP ViT-L/14 at 224 px: 16 x 16 patches + the class token
WARMUP_STEPS = 3


def build_model(device: torch.device | str, dtype: torch.dtype = torch.bfloat16) -> MegaSRDenoiser:
    """Random full-size MegaSR on ``device`` (``meta`` costs no memory), frozen, eval mode."""
    with torch.device(device):
        denoiser = sd2_base_denoiser()
    return denoiser.to(dtype=dtype).eval().requires_grad_(False)


def parameter_counts(denoiser: MegaSRDenoiser) -> dict[str, int]:
    """Pretrained-shape U-Net and ControlNet, and all CSMs and all MSFMs of both networks."""

    def base(net: torch.nn.Module) -> int:
        return sum(p.numel() for n, p in net.named_parameters() if not is_adapter_key(n))

    def new(kind: type) -> int:
        return sum(
            p.numel() for m in denoiser.modules() if isinstance(m, kind) for p in m.parameters()
        )

    return {
        "unet": base(denoiser.unet),
        "controlnet": base(denoiser.controlnet),
        "csm": new(CSM),
        "msfm": new(MSFM),
    }


def step_inputs(batch: int, device: torch.device, dtype: torch.dtype, cached: bool = False) -> dict:
    """Inputs of one guided step for ``batch`` tiles: latents, timesteps, prompts and control
    doubled for CFG, the conditions one row per tile (with a step cache when ``cached``)."""
    n, pixels = 2 * batch, LATENT * 8
    return {
        "latents": torch.randn(n, 4, LATENT, LATENT, device=device, dtype=dtype),
        "timesteps": torch.full((n,), 500, device=device),
        "text_embeddings": torch.randn(
            n, TEXT_TOKENS, SD2_BASE_UNET["cross_attention_dim"], device=device, dtype=dtype
        ),
        "control": torch.rand(n, 3, pixels, pixels, device=device, dtype=dtype),
        "conditions": MegaSRConditions(
            image_tokens=torch.randn(
                batch, IMAGE_TOKENS, SD2_BASE_MODULES.clip_width, device=device, dtype=dtype
            ),
            hed=torch.rand(batch, 1, pixels, pixels, device=device, dtype=dtype),
            depth=torch.rand(batch, 1, pixels, pixels, device=device, dtype=dtype),
            seg=torch.rand(batch, 3, pixels, pixels, device=device, dtype=dtype),
            cache=StepCache() if cached else None,
        ),
    }


@torch.no_grad()
def time_steps(model, inputs: dict, steps: int) -> float:
    """Milliseconds per step, from CUDA events around ``steps`` steps after a warm-up."""
    for _ in range(WARMUP_STEPS):
        model(**inputs)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(steps):
        model(**inputs)
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / steps


@torch.no_grad()
def flops_per_sample(model: MegaSRDenoiser, device: torch.device, dtype: torch.dtype) -> float:
    inputs = step_inputs(1, device, dtype)
    with FlopCounterMode(display=False) as counter:
        model(**inputs)
    return counter.get_total_flops() / 2  # the batch holds 2 samples (CFG)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per measurement")
    parser.add_argument("--budget-s", type=float, default=480.0)
    parser.add_argument("--no-compile", action="store_true")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print(
            "megasr_gpu.py needs a CUDA GPU and found none; nothing was measured.", file=sys.stderr
        )
        return 2
    started = time.monotonic()
    device, dtype = torch.device("cuda"), torch.bfloat16
    print(f"device: {torch.cuda.get_device_name(device)}, torch {torch.__version__}, bfloat16")

    model = build_model(device, dtype)
    for name, count in parameter_counts(model).items():
        print(f"parameters {name:<11}{count / 1e6:10.1f} M")
    flops = flops_per_sample(model, device, dtype)
    print(
        f"forward FLOPs per 512 px sample (U-Net + ControlNet + CSM + MSFM): {flops / 1e12:.2f} T"
    )

    modes = [("eager", model, False), ("cached", model, True)]
    if not args.no_compile:
        modes.append(("compiled", torch.compile(model), True))
    print(f"{'mode':<9}{'batch':>6}{'ms/step':>10}{'ms/tile':>10}{'TFLOP/s':>9}{'peak GiB':>10}")
    for mode, runnable, cached in modes:
        for batch in args.batches:
            if time.monotonic() - started > args.budget_s:
                print(f"{mode:<9}{batch:>6}  skipped: the {args.budget_s:.0f} s budget is spent")
                continue
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            ms = time_steps(runnable, step_inputs(batch, device, dtype, cached), args.steps)
            peak = torch.cuda.max_memory_allocated(device) / 2**30
            achieved = 2 * batch * flops / (ms / 1e3) / 1e12
            print(f"{mode:<9}{batch:>6}{ms:10.1f}{ms / batch:10.1f}{achieved:9.0f}{peak:10.2f}")
    print(f"total {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
