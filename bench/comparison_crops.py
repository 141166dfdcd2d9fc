"""Side-by-side crops for the docs, from the folders ``megasr eval --save-images`` writes.

One PNG per call: the LR input (pixels repeated to the output scale, so nothing is
interpolated), then each method's output, then the HR ground truth when there is one, all
the same region, each panel labelled.

    .venv/bin/python bench/comparison_crops.py SAVED_DIR IMAGE --box TOP LEFT SIDE \\
        [--methods bicubic realesrgan-x4plus] [--scale 4] -o docs/images/NAME.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

LABEL_HEIGHT = 14
GAP = 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("saved", type=Path, help="the --save-images folder of megasr eval")
    parser.add_argument("image", help="image name (file stem)")
    parser.add_argument("--box", type=int, nargs=3, metavar=("TOP", "LEFT", "SIDE"), required=True)
    parser.add_argument("--methods", nargs="+", default=["bicubic", "realesrgan-x4plus"])
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("-o", "--output", type=Path, required=True)
    args = parser.parse_args()
    top, left, side = args.box
    panels = [("LR input", _lr_panel(args.saved, args.image, args.scale))]
    panels += [(m, _read(args.saved / m / f"{args.image}.png")) for m in args.methods]
    hr = args.saved / "hr" / f"{args.image}.png"
    if hr.exists():
        panels.append(("HR (ground truth)", _read(hr)))
    crops = [(label, pixels[top : top + side, left : left + side]) for label, pixels in panels]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    compose(crops, side).save(args.output, optimize=True)
    print(f"wrote {args.output} ({args.output.stat().st_size // 1024} KiB)")


def _read(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def _lr_panel(saved: Path, image: str, scale: int) -> np.ndarray:
    lr = _read(saved / "lr" / f"{image}.png")
    return lr.repeat(scale, axis=0).repeat(scale, axis=1)


def compose(crops: list[tuple[str, np.ndarray]], side: int) -> Image.Image:
    width = len(crops) * side + (len(crops) - 1) * GAP
    sheet = Image.new("RGB", (width, side + LABEL_HEIGHT), "white")
    draw = ImageDraw.Draw(sheet)
    for index, (label, pixels) in enumerate(crops):
        x = index * (side + GAP)
        sheet.paste(Image.fromarray(np.ascontiguousarray(pixels)), (x, LABEL_HEIGHT))
        draw.text((x + 2, 1), label, fill="black")
    return sheet


if __name__ == "__main__":
    main()
