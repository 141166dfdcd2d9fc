"""Can int8 keep Real-ESRGAN x4plus within 45 dB of float32? Quality first, speed after.

int8 would double the multiply throughput of a CPU without AMX (AVX512-VNNI against
AVX512-BF16), but only if the output stays within the quality bar. This simulates oneDNN's
int8 convolution in float32 (weights int8 per output channel, symmetric; each convolution's
input uint8 per tensor, asymmetric, the only activation granularity oneDNN's convolutions
take) and measures PSNR and the largest 8-bit difference against float32 on photographs the
calibration never saw. The variants:

- **ranges**: the activation range from the calibration crops' min/max, their 99.99th
  percentiles, or the clip that minimises each tensor's quantisation error (MSE search);
- **SmoothQuant**: each convolution's input channels divided by
  ``s = max|x|^a / max|w|^(1-a)`` and its weights multiplied by it before quantising (a
  real build folds ``1/s`` into the previous layer; simulated here, an upper bound);
- **sensitive layers in bfloat16**: each convolution quantised alone, ranked by the PSNR it
  costs, and the worst ``k`` kept in bfloat16 (simulated by rounding to bfloat16).

The speed of a kept variant would then be measured with real int8 kernels; a variant that
misses the bar is not worth that.

    .venv/bin/python bench/cpu_int8_quality.py      # every range; ~1 GiB
    OMP_NUM_THREADS=1 .venv/bin/python bench/cpu_int8_quality.py --ranges minmax \
        --rank-crop 16 --keep 8,32,96               # 6 min on one thread of a busy machine
"""

from __future__ import annotations

import argparse
import math
import resource
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import torch
from skimage import data
from torch import nn

from megasr.model.benchmark.machine import load_average
from megasr.model.cpu_isa import describe_isa
from megasr.model.engines.realesrgan import load_state_dict
from megasr.model.nets.rrdbnet import RRDBNet
from megasr.settings import Settings

Quantize = Callable[[torch.Tensor], torch.Tensor]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crop", type=int, default=48, help="crop side in pixels")
    parser.add_argument("--keep", default="0,8,32,96", help="numbers of layers left in bf16")
    parser.add_argument("--ranges", default="minmax,percentile,mse", help="activation ranges")
    parser.add_argument("--rank-crop", type=int, default=32, help="crop side for the ranking")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    print(f"{describe_isa()}; load average before {load_average()}", flush=True)
    net = RRDBNet().eval()
    net.load_state_dict(load_state_dict(Settings().cache_dir))
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    calibration = crops(data.coffee(), args.crop, 3) + crops(data.chelsea(), args.crop, 2)
    evaluation = crops(data.astronaut(), args.crop, 3)
    references = [net(x) for x in evaluation]
    stats = activation_stats(net, convs, calibration)
    scales = smoothing(stats, convs)
    smoothed = activation_stats(net, convs, calibration, scales)  # ~20k values a crop a layer
    ones = {conv: torch.ones(conv.in_channels) for conv in convs}
    print(
        f"{len(convs)} convolutions; calibrated on {len(calibration)} crops, "
        f"evaluated on {len(evaluation)} held-out crops of {args.crop} px\n"
    )
    print("| variant | layers in bf16 | PSNR vs float32 (dB), worst crop | max diff (levels) |")
    print("|---|---:|---:|---:|")
    variants = {}
    for ranges in args.ranges.split(","):
        for name, observed, scale in (("", stats, ones), (", SmoothQuant", smoothed, scales)):
            plan = {conv: quantizer(observed[conv], ranges, scale[conv]) for conv in convs}
            worst_psnr, quality = evaluate(net, plan, evaluation, references)
            variants[f"{ranges}{name}"] = (worst_psnr, plan)
            print(f"| {ranges}{name} | 0 | {quality} |", flush=True)
    label = max(variants, key=lambda v: variants[v][0])  # best worst-crop PSNR
    best = variants[label][1]
    start = time.perf_counter()
    probe = evaluation[0][..., : args.rank_crop, : args.rank_crop]  # 351 passes: keep it small
    probe_reference = net(probe)
    costs = {conv: psnr_cost(net, {conv: best[conv]}, probe, probe_reference) for conv in convs}
    print(
        f"\n(sensitivity of each layer alone, on a {args.rank_crop} px crop: "
        f"{time.perf_counter() - start:.0f} s)\n"
    )
    ranked = sorted(convs, key=costs.__getitem__)  # lowest PSNR first
    for keep in (int(k) for k in args.keep.split(",")):
        plan = {conv: best[conv] for conv in ranked[keep:]}
        plan.update({conv: to_bfloat16 for conv in ranked[:keep]})
        _, quality = evaluate(net, plan, evaluation, references)
        print(f"| {label}, sensitive in bf16 | {keep} | {quality} |", flush=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"\nload average after {load_average()}; peak RSS {peak:.1f} GiB")


def crops(photo: np.ndarray, side: int, count: int) -> list[torch.Tensor]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(count):
        y = int(rng.integers(0, photo.shape[0] - side))
        x = int(rng.integers(0, photo.shape[1] - side))
        crop = np.ascontiguousarray(photo[y : y + side, x : x + side])
        out.append(torch.from_numpy(crop).permute(2, 0, 1)[None].float() / 255)
    return out


def activation_stats(net, convs, crops, scales=None):
    """Each convolution's inputs over the calibration crops, divided by its SmoothQuant
    ``scales`` where given: a subsample of values, and the per-channel absolute maximum."""
    seen: dict[nn.Conv2d, list[torch.Tensor]] = {conv: [] for conv in convs}
    channel_max: dict[nn.Conv2d, torch.Tensor] = {}

    def hook(conv: nn.Conv2d):
        def record(module: nn.Module, inputs: tuple[torch.Tensor]) -> None:
            x = inputs[0]
            if scales is not None:
                x = x / scales[conv][None, :, None, None]
            # a copy: a strided view keeps the whole activation alive (GiB over 351 layers)
            seen[conv].append(x.flatten()[:: max(1, x.numel() // 20_000)].clone())
            peak = x.abs().amax(dim=(0, 2, 3))
            channel_max[conv] = torch.maximum(channel_max.get(conv, peak), peak)

        return record

    handles = [conv.register_forward_pre_hook(hook(conv)) for conv in convs]
    for x in crops:
        net(x)
    for handle in handles:
        handle.remove()
    return {conv: (torch.cat(seen[conv]), channel_max[conv]) for conv in convs}


def smoothing(stats, convs, alpha: float = 0.5):
    """SmoothQuant's per-input-channel scales: activation outliers moved into the weights."""
    scales = {}
    for conv in convs:
        weight_max = conv.weight.abs().amax(dim=(0, 2, 3)).clamp_min(1e-5)
        activation_max = stats[conv][1].clamp_min(1e-5)
        scales[conv] = (activation_max**alpha / weight_max ** (1 - alpha)).clamp(1e-2, 1e2)
    return scales


def quantizer(stats, ranges: str, scale: torch.Tensor):
    low, high = activation_range(stats[0], ranges)
    return {"low": low, "high": high, "scale": scale}


def activation_range(values: torch.Tensor, ranges: str) -> tuple[float, float]:
    if ranges == "minmax":
        return float(values.min()), float(values.max())
    if ranges == "percentile":
        sample = values[torch.randperm(len(values), generator=torch.Generator().manual_seed(0))]
        sample = sample[:100_000]
        return float(sample.quantile(0.0001)), float(sample.quantile(0.9999))
    low, high = float(values.min()), float(values.max())
    best, best_error = (low, high), math.inf
    for ratio in np.linspace(0.3, 1.0, 15):
        q = fake_uint8(values, low * ratio, high * ratio)
        error = float(((q - values) ** 2).mean())
        if error < best_error:
            best, best_error = (low * ratio, high * ratio), error
    return best


def fake_uint8(x: torch.Tensor, low: float, high: float) -> torch.Tensor:
    step = max(high - low, 1e-8) / 255
    zero = round(-low / step)
    return (torch.clamp(torch.round(x / step) + zero, 0, 255) - zero) * step


def fake_int8_per_channel(weight: torch.Tensor) -> torch.Tensor:
    step = weight.abs().amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-8) / 127
    return torch.clamp(torch.round(weight / step), -127, 127) * step


def to_bfloat16(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.bfloat16).float()


@contextmanager
def simulated(plan: dict) -> Iterator[None]:
    """Each planned convolution computes on quantised (or bfloat16) input and weights."""
    originals = {}
    for conv, how in plan.items():
        originals[conv] = conv.forward

        def forward(x, conv=conv, how=how):
            if how is to_bfloat16:
                return conv._conv_forward(to_bfloat16(x), to_bfloat16(conv.weight), conv.bias)
            s = how["scale"][None, :, None, None]
            xq = fake_uint8(x / s, how["low"], how["high"])
            wq = fake_int8_per_channel(conv.weight * s)
            return conv._conv_forward(xq, wq, conv.bias)

        conv.forward = forward
    try:
        yield
    finally:
        for conv, forward in originals.items():
            conv.forward = forward


def to8(x: torch.Tensor) -> np.ndarray:
    return np.round(x.clamp(0, 1)[0].permute(1, 2, 0).numpy() * 255).astype(np.int16)


def evaluate(net, plan, crops, references) -> tuple[float, str]:
    worst, largest = math.inf, 0
    with simulated(plan):
        for x, ref in zip(crops, references, strict=True):
            a, b = to8(net(x)), to8(ref)
            mse = float(np.mean((a - b) ** 2.0))
            worst = min(worst, math.inf if mse == 0 else 10 * math.log10(255**2 / mse))
            largest = max(largest, int(np.abs(a - b).max()))
    return worst, f"{worst:.1f} | {largest}"


def psnr_cost(net, plan, probe, reference) -> float:
    with simulated(plan):
        out = net(probe)
    mse = float(((out.clamp(0, 1) - reference.clamp(0, 1)) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


if __name__ == "__main__":
    main()
