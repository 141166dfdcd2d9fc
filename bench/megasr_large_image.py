"""One large image through the ``megasr`` engine before and after it treated images whole.

The astronaut photograph (scikit-image, 512 x 512, public domain) is upscaled x4 to
2048 x 2048 by the tiny MegaSR checkpoint (its new modules and ControlNet outputs set to
fixed random values, the same per weight name on both sides, so the modules act), once with
the project before the change (``--before DIR``, a child process importing that checkout)
and once now. Before, the engine restored each 192-pixel LR tile as an image of its own,
every tile from the same seeded noise, and blended the tiles in pixel space; now it
restores the image whole, tiled in latent space with one noise field.

Written to ``--out`` (default docs/images): both outputs downscaled to 640 px, a 512-pixel
crop of each at full resolution where four tiles meet, and a plot of the row autocorrelation
of the generated detail (output minus the bicubic upscale) against the lag, with the tile
stride (512 output pixels on both sides) marked; the figures are printed.

    python bench/megasr_large_image.py --before ../old [--out docs/images]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

STRIDE = 512  # output pixels between tile starts, before (128 LR px x4) and after (64 latents)
SCALE = 4
LAGS = range(8, 769, 4)
CROP = (768, 768, 512)  # y, x, side: around the tile junction at (1024 - 256 ...)


def upscale(checkpoint: Path, out: Path) -> None:
    """In whichever version of the project is importable: build the tiny checkpoint, give
    its new modules fixed random weights, upscale the astronaut x4, save the float output."""
    from skimage import data

    from megasr.imaging.image import DecodedImage
    from megasr.imaging.sizing import OutputSize
    from megasr.model.engines.megasr_engine import MegaSREngine
    from megasr.model.megasr.checkpoint import init_tiny_checkpoint
    from megasr.model.upscaler import Upscaler
    from megasr.settings import Settings

    torch.set_num_threads(os.cpu_count() or 1)
    init_tiny_checkpoint(checkpoint, seed=0)
    engine = MegaSREngine(checkpoint, Settings())
    engine.load(torch.device("cpu"))
    _randomise(engine._model.denoiser)
    rgb = data.astronaut().astype(np.float32) / 255
    image = DecodedImage(rgb=rgb, alpha=None, source_format="png")
    result = Upscaler(engine).upscale(image, OutputSize(scale=SCALE))
    np.save(out, result.rgb)


def _randomise(denoiser: torch.nn.Module) -> None:
    """LGWAM, MSFM and the ControlNet's zero convolutions off zero, seeded by weight name."""
    with torch.no_grad():
        for name, param in denoiser.named_parameters():
            trained = (".lgwam.", ".msfm.", "controlnet_down_blocks", "controlnet_mid_block")
            if any(part in name for part in trained):
                generator = torch.Generator().manual_seed(zlib.crc32(name.encode()))
                param.add_(torch.randn(param.shape, generator=generator) * 0.1)


def detail_autocorrelation(output: np.ndarray, lr: np.ndarray) -> np.ndarray:
    """Row autocorrelation of ``output`` minus the bicubic upscale of ``lr``, per lag."""
    bicubic = F.interpolate(
        torch.from_numpy(lr).permute(2, 0, 1)[None], scale_factor=SCALE, mode="bicubic"
    )[0].permute(1, 2, 0)
    detail = torch.from_numpy(output) - bicubic
    detail = detail - detail.mean(dim=1, keepdim=True)
    energy = (detail * detail).mean()
    return np.array([((detail[:, :-lag] * detail[:, lag:]).mean() / energy).item() for lag in LAGS])


def plot(curves: dict[str, np.ndarray], path: Path) -> None:
    """A line plot of each curve against the lag, drawn with Pillow."""
    width, height, margin = 720, 320, 48
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    low = min(-0.1, min(c.min() for c in curves.values()))
    high = max(0.3, max(c.max() for c in curves.values()))

    def xy(lag: int, value: float) -> tuple[float, float]:
        x = margin + (lag - LAGS[0]) / (LAGS[-1] - LAGS[0]) * (width - 2 * margin)
        y = height - margin - (value - low) / (high - low) * (height - 2 * margin)
        return x, y

    draw.line([xy(LAGS[0], 0), xy(LAGS[-1], 0)], fill="gray")
    draw.line([xy(STRIDE, low), xy(STRIDE, high)], fill="gray")
    draw.text(xy(STRIDE, high), f" tile stride {STRIDE} px", fill="black")
    for lag in (LAGS[0], 256, 512, LAGS[-1]):
        draw.text(xy(lag, low), f"{lag}", fill="black")
    draw.text((margin, 8), "row autocorrelation of the generated detail vs lag (px)", fill="black")
    for (name, curve), colour in zip(curves.items(), ("firebrick", "navy"), strict=False):
        draw.line([xy(lag, v) for lag, v in zip(LAGS, curve, strict=True)], fill=colour, width=2)
        draw.text((width - 160, 24 + 14 * list(curves).index(name)), name, fill=colour)
    canvas.save(path)


def _run_before(before: Path, checkpoint: Path, out: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        package = Path(tmp) / "megasr"
        shutil.copytree(before / "core", package, symlinks=True)
        for part in ("model", "service", "worker"):
            (package / part).symlink_to((before / part).resolve())
        env = {**os.environ, "PYTHONPATH": tmp}
        command = [sys.executable, __file__, "--child", str(checkpoint), str(out)]
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"the 'before' run failed:\n{done.stderr[-3000:]}")


def _save(pixels: np.ndarray, path: Path, size: int | None = None) -> None:
    image = Image.fromarray((pixels.clip(0, 1) * 255 + 0.5).astype(np.uint8))
    if size is not None:
        image = image.resize((size, size), Image.Resampling.LANCZOS)
    image.save(path, quality=80)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, required=False)
    parser.add_argument("--out", type=Path, default=Path("docs/images"))
    parser.add_argument("--child", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        upscale(*args.child)
        return 0
    from skimage import data

    lr = data.astronaut().astype(np.float32) / 255
    outputs: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory() as tmp:
        if args.before:
            _run_before(args.before, Path(tmp) / "before-ckpt", Path(tmp) / "before.npy")
            outputs["before (per tile)"] = np.load(Path(tmp) / "before.npy")
        upscale(Path(tmp) / "after-ckpt", Path(tmp) / "after.npy")
        outputs["after (whole image)"] = np.load(Path(tmp) / "after.npy")
    args.out.mkdir(parents=True, exist_ok=True)
    curves = {name: detail_autocorrelation(out, lr) for name, out in outputs.items()}
    plot(curves, args.out / "megasr-large-autocorrelation.png")
    at = list(LAGS).index(STRIDE)
    figures = {}
    for name, out in outputs.items():
        tag = name.split()[0]
        _save(out, args.out / f"megasr-large-{tag}.jpg", size=640)
        y, x, side = CROP
        _save(out[y : y + side, x : x + side], args.out / f"megasr-large-{tag}-crop.jpg")
        curve = curves[name]
        neighbours = np.concatenate([curve[at - 4 : at - 1], curve[at + 2 : at + 5]])
        figures[name] = {
            "shape": list(out.shape),
            "autocorrelation_at_stride": round(float(curve[at]), 4),
            "neighbours_max": round(float(neighbours.max()), 4),
        }
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
