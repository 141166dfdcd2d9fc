"""One held-out photograph through HED before and after prior-guided fine-tuning (docs).

Panels, all the same region: the LR image as HED sees it (bicubic-upscaled), the
pretrained HED on the HR image (the target), the pretrained HED on the LR image, and the
fine-tuned HED on the LR image. The image is cropped and degraded exactly as ``megasr train
pgft-extractor --val-data`` measures it (centre crop, degradation from the seed and the
file name), so the panels show what the reported numbers average.

    .venv/bin/python bench/pgft_hed_figure.py HELD_OUT_DIR IMAGE TUNED.safetensors \\
        --box TOP LEFT SIDE [--seed 0] [--held-out-side 512] -o docs/images/NAME.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from comparison_crops import compose

from megasr.model.degradation import RealESRGANDegradation
from megasr.model.evaluation.degradations import image_generator
from megasr.model.extractors.hed_weights import load_hed
from megasr.model.training.data import center_crop, load_held_out
from megasr.model.training.inputs import upscale_to
from megasr.settings import get_settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("held_out", type=Path)
    parser.add_argument("image", help="image name (file stem)")
    parser.add_argument("tuned", type=Path, help="the fine-tuned HED weights")
    parser.add_argument("--box", type=int, nargs=3, metavar=("TOP", "LEFT", "SIDE"), required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--held-out-side", type=int, default=512)
    parser.add_argument("-o", "--output", type=Path, required=True)
    args = parser.parse_args()
    images = dict(load_held_out([args.held_out])[0])
    degradation = RealESRGANDegradation()
    hr = center_crop(images[args.image], args.held_out_side, degradation.config.scale)[None]
    lr_up = upscale_to(degradation(hr, image_generator(args.seed, args.image)), hr)
    pretrained = load_hed("bundled", get_settings().cache_dir).eval()
    tuned = load_hed(str(args.tuned), get_settings().cache_dir).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        panels = [
            ("LR (bicubic)", lr_up),
            ("HED(HR), target", pretrained.edges(hr)),
            ("HED(LR), pretrained", pretrained.edges(lr_up)),
            ("HED(LR), fine-tuned", tuned.edges(lr_up)),
        ]
    top, left, side = args.box
    crops = [
        (label, _pixels(image)[top : top + side, left : left + side]) for label, image in panels
    ]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    compose(crops, side).save(args.output, optimize=True)
    print(f"wrote {args.output} ({args.output.stat().st_size // 1024} KiB)")


def _pixels(image: torch.Tensor) -> np.ndarray:
    """(1, C, H, W) in [0, 1] -> (H, W, 3) uint8; edge maps are drawn black on white."""
    array = image[0].float().clamp(0, 1).permute(1, 2, 0).numpy()
    if array.shape[2] == 1:
        array = np.repeat(1.0 - array, 3, axis=2)
    return np.round(array * 255).astype(np.uint8)


if __name__ == "__main__":
    main()
