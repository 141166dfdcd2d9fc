"""MegaSR sampling, before and after the whole-image pipeline, in one run (CPU or CUDA).

For the tiny model and for the full-size denoiser (SD-2-base U-Net + ControlNet with every
CSM and MSFM, random weights; tiny VAE, text encoder and extractors, which the denoising loop
does not use), one image of one latent tile is restored with classifier-free guidance, by
default on the CPU in float32 (what the engine runs on a CPU; the code before the change cannot run
bfloat16 on a CPU at all: its MSFM resize has no bfloat16 kernel there; ``--device cuda``
runs bfloat16 on a GPU), and each denoising step is measured:

- seconds per step: the first step (which fills the step cache) and the median of the rest;
- peak memory of the whole restore (resident set growth, see ``megasr.model.benchmark``);
- bytes sent to the device per step (:class:`DeviceMoves`): before the change the control
  image, guidance maps, image tokens and prompts were kept on the host and sent to the
  engine's device at every step;
- FLOPs of one denoiser forward of the full-size model at ``--flops-tile`` latents (on the
  meta device, so it costs no compute): without the step cache, the first step (it fills
  the cache) and every later step.

"Before" runs the same measurements in a child process on a checkout of the project before
the change (``--before DIR``, e.g. ``git worktree add --detach DIR e12ce84``), with the old
pipeline's own API; everything else is the same run, machine and settings.

    python bench/megasr_sampling.py --before ../old [--steps 3] [--tile 64] [--tiny-tile 32]
        [--device cuda]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import CLIPTextConfig, CLIPTextModel

from megasr.model.benchmark.machine import describe_machine, load_average
from megasr.model.benchmark.memory import PeakMemory
from megasr.model.megasr.conditions import MegaSRConditions
from megasr.model.megasr.presets import SD2_BASE_MODULES, sd2_base_denoiser

try:  # the diffusers pipeline of this checkout
    from megasr.model.megasr.pipeline import MegaSRPipeline, RestoreInput
    from megasr.model.megasr.presets import build_tiny_pipeline

    SIDE = "after"
except ImportError:  # a checkout before the whole-image pipeline (--before)
    from megasr.model.megasr.components import build_tiny_model

    SIDE = "before"


class DeviceMoves:
    """Bytes of host tensors sent to a device (``Tensor.to`` with a device) per step.

    Counted at the call, not at the copy: on this CPU the engine's device is the host, so
    such a call copies nothing, but it is exactly the call that copies from host to device
    memory when the engine runs on a GPU.
    """

    def __init__(self) -> None:
        self.per_step: list[int] = []
        self._bytes = 0
        self._original = torch.Tensor.to

    def step_done(self) -> None:
        self.per_step.append(self._bytes)
        self._bytes = 0

    def __enter__(self) -> DeviceMoves:
        original, moves = self._original, self

        def to(tensor: torch.Tensor, *args, **kwargs):
            targets_device = "device" in kwargs or any(
                isinstance(a, torch.device | str) for a in args
            )
            if targets_device and tensor.device.type == "cpu":  # from the host
                moves._bytes += tensor.nbytes
            return original(tensor, *args, **kwargs)

        torch.Tensor.to = to
        return self

    def __exit__(self, *exc: object) -> None:
        torch.Tensor.to = self._original


def build(full: bool, device: torch.device, dtype: torch.dtype):
    """The tiny model, or the tiny one with the full-size denoiser and a text encoder of
    SD-2's width (1024) in place of theirs."""
    model = build_tiny_pipeline(0) if SIDE == "after" else build_tiny_model(0)
    if not full:
        return model.to(device, dtype).freeze()
    modules = replace(SD2_BASE_MODULES, clip_width=model.extractors.clip_width)
    denoiser = sd2_base_denoiser(modules)
    text_encoder = _wide_text_encoder(model.tokenizer)
    if SIDE == "before":
        model.denoiser, model.text_encoder = denoiser, text_encoder
        model.config = replace(model.config, modules=modules)
        return model.to(device, dtype).freeze()
    parts = {**model.components, "unet": denoiser.unet, "controlnet": denoiser.controlnet}
    model = MegaSRPipeline(**{**parts, "text_encoder": text_encoder}, **_settings(model))
    return model.to(device, dtype).freeze()


def _settings(pipe) -> dict:
    return {"inference": pipe.config.inference, "preset": pipe.config.preset}


def _wide_text_encoder(tokenizer) -> CLIPTextModel:
    eos = tokenizer.convert_tokens_to_ids(tokenizer.eos_token)
    return CLIPTextModel(
        CLIPTextConfig(
            hidden_size=1024,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=8,
            max_position_embeddings=tokenizer.model_max_length,
            vocab_size=len(tokenizer),
            bos_token_id=tokenizer.convert_tokens_to_ids(tokenizer.bos_token),
            eos_token_id=eos,
            pad_token_id=eos,
        )
    )


def restore(model, lr: torch.Tensor, options, on_step) -> torch.Tensor:
    """One image through the sampling pipeline, with either side's API."""
    size = (lr.shape[-2] * 4, lr.shape[-1] * 4)
    if SIDE == "after":
        given = RestoreInput(lr, size, prompt="a photo", seed=1, options=options)
        (request,) = model.prepare([given])
        request.on_step = on_step
        return model.restore_one(request, batch_size=1)
    request = replace(model.prepare(lr, size, "a photo", 1), on_step=on_step)
    return model.pipeline().restore_one(request, options, batch_size=1)


def measure_steps(full: bool, tile: int, steps: int, device: torch.device) -> dict:
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = build(full, device, dtype)
    overlap = tile // 4  # one tile covers the image: the overlap only has to be valid
    options = replace(
        model.inference if SIDE == "after" else model.config.inference,
        steps=steps,
        latent_tile=tile,
        latent_tile_overlap=overlap,
        vae_tile=tile,
        vae_tile_overlap=overlap,
        color_fix="none",
    )
    lr = torch.rand(3, tile * 2, tile * 2, generator=torch.Generator().manual_seed(0))
    restore(model, lr, replace(options, steps=1), lambda *_: None)  # warm-up
    stamps: list[float] = []
    moves = DeviceMoves()

    def on_step(done: int, total: int) -> None:
        stamps.append(time.perf_counter())
        moves.step_done()

    def first_forward(*_: object) -> None:  # the loop starts: preparation is not a step
        if not stamps:
            stamps.append(time.perf_counter())
            moves.step_done()

    hook = model.denoiser.register_forward_pre_hook(first_forward)
    with PeakMemory(device) as peak, moves:
        restore(model, lr, options, on_step)
    hook.remove()
    moves.per_step.pop(0)  # what preparation sent
    times = [b - a for a, b in itertools.pairwise(stamps)]
    return {
        "first_step_s": times[0],
        "later_step_s": statistics.median(times[1:]),
        "peak_mib": None if peak.bytes is None else peak.bytes / 2**20,
        "moved_first_step_bytes": moves.per_step[0],
        "moved_later_step_bytes": statistics.median(moves.per_step[1:]),
    }


def measure_flops(tile: int) -> dict:
    """One guided forward of the full-size denoiser on meta tensors: FLOPs per step."""
    with torch.device("meta"):
        denoiser = sd2_base_denoiser().eval().requires_grad_(False)
        pixels = tile * 8
        args = {
            "latents": torch.randn(2, 4, tile, tile),
            "timesteps": torch.full((2,), 500),
            "text_embeddings": torch.randn(2, 77, 1024),
            "control": torch.rand(2, 3, pixels, pixels),
        }
        tokens = torch.randn(1, 257, SD2_BASE_MODULES.clip_width)
        maps = {
            "hed": torch.rand(1, 1, pixels, pixels),
            "depth": torch.rand(1, 1, pixels, pixels),
            "seg": torch.rand(1, 3, pixels, pixels),
        }

    def flops(conditions: MegaSRConditions) -> int:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            denoiser(**args, conditions=conditions)
        return counter.get_total_flops()

    if SIDE == "before":  # the old modules took the conditions repeated for each copy
        repeated = {k: v.repeat(2, 1, 1, 1) for k, v in maps.items()}
        return {"uncached": flops(MegaSRConditions(tokens.repeat(2, 1, 1), **repeated))}
    from megasr.model.megasr.conditions import StepCache

    cached = MegaSRConditions(tokens, **maps, cache=StepCache())
    return {
        "uncached": flops(MegaSRConditions(tokens, **maps)),
        "first_step": flops(cached),
        "later_steps": flops(cached),
    }


def measure(args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    device = torch.device(args.device)
    return {
        "side": SIDE,
        "tiny": measure_steps(False, args.tiny_tile, args.steps, device),
        "full": measure_steps(True, args.tile, args.steps, device),
        "flops": measure_flops(args.flops_tile),
    }


def run_before(args: argparse.Namespace) -> dict:
    """This script in a child process that imports the old checkout ``args.before``."""
    with tempfile.TemporaryDirectory() as tmp:
        package = Path(tmp) / "megasr"
        shutil.copytree(args.before / "core", package, symlinks=True)
        for part in ("model", "service", "worker"):
            (package / part).symlink_to((args.before / part).resolve())
        env = {**os.environ, "PYTHONPATH": tmp}
        command = [sys.executable, __file__, "--child", *_shared_flags(args)]
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"the 'before' run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _shared_flags(args: argparse.Namespace) -> list[str]:
    return [
        "--steps", str(args.steps), "--tile", str(args.tile),
        "--tiny-tile", str(args.tiny_tile), "--flops-tile", str(args.flops_tile),
        "--device", args.device,
    ]  # fmt: skip


def report(before: dict | None, after: dict, device: str) -> str:
    lines = [
        f"machine: {json.dumps(describe_machine(torch.device(device)))}",
        "",
        "| model | side | first step s | later steps s | peak MiB | to device, step 1 (bytes) | "
        "to device, later steps (bytes) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name in ("tiny", "full"):
        for side in (before, after):
            if side is None:
                continue
            r = side[name]
            peak = "n/a" if r["peak_mib"] is None else f"{r['peak_mib']:.0f}"
            lines.append(
                f"| {name} | {side['side']} | {r['first_step_s']:.3f} | {r['later_step_s']:.3f}"
                f" | {peak} | {r['moved_first_step_bytes']:,} | "
                f"{r['moved_later_step_bytes']:,.0f} |"
            )
        if before is not None:
            ratio = before[name]["later_step_s"] / after[name]["later_step_s"]
            lines.append(f"| {name} | speed-up, later steps | | {ratio:.2f}x | | | |")
    lines += ["", "| FLOPs per guided step (full size) | TFLOP |", "|---|---:|"]
    for side in (before, after):
        if side is not None:
            for key, value in side["flops"].items():
                lines.append(f"| {side['side']}: {key} | {value / 1e12:.3f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, help="a checkout of the project before the change")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--tile", type=int, default=64, help="full-size latent tile (x8 px)")
    parser.add_argument("--tiny-tile", type=int, default=32, help="tiny model latent tile")
    parser.add_argument("--flops-tile", type=int, default=96, help="latent tile for FLOPs")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args)))
        return 0
    started, load = time.monotonic(), load_average()
    before = run_before(args) if args.before else None
    after = measure(args)
    print(report(before, after, args.device))
    took = time.monotonic() - started
    print(f"\nload average before {load}, after {load_average()}; {took:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
