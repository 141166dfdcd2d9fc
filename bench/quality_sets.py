"""Write the image sets that ``docs/quality.md`` evaluates, from files that ship in packages.

- ``skimage-hr/``: six scikit-image photographs (public domain / CC0; the motorcycle is the
  left view of its stereo pair), as PNG: ground truth for the synthetic degradations.
- ``flower-q85/``: three 160x160 regions of Debian ``libjxl-testdata``'s real libjpeg q85
  encodings of ``jxl/flower/flower.png`` in four chroma subsamplings, stored losslessly:
  inputs with real compression artifacts. The PNG the JPEGs were made from is the same
  size, so there is no 4x ground truth: they are scored by no-reference metrics.

Needs the dev install (scikit-image) and ``apt-get install libjxl-testdata``.

    .venv/bin/python bench/quality_sets.py OUT_DIR
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data

FLOWER_DIR = Path("/usr/share/libjxl-testdata/jxl/flower")
SUBSAMPLINGS = ("420", "422", "440", "444")
# (name, top, left) of each region, on the 16-pixel grid of the JPEG's blocks.
REGIONS = (("petals", 720, 1232), ("buds", 1264, 336), ("leaves", 1200, 1888))
SIDE = 160
PHOTOS = {
    "astronaut": data.astronaut,
    "camera": data.camera,
    "chelsea": data.chelsea,
    "coffee": data.coffee,
    "grass": data.grass,
    "motorcycle": lambda: data.stereo_motorcycle()[0],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    hr_dir, flower_dir = args.out / "skimage-hr", args.out / "flower-q85"
    hr_dir.mkdir(parents=True, exist_ok=True)
    flower_dir.mkdir(parents=True, exist_ok=True)
    for name, load in PHOTOS.items():
        Image.fromarray(load()).save(hr_dir / f"{name}.png")
    for subsampling in SUBSAMPLINGS:
        jpeg = np.asarray(Image.open(FLOWER_DIR / f"flower.png.im_q85_{subsampling}.jpg"))
        for region, top, left in REGIONS:
            crop = jpeg[top : top + SIDE, left : left + SIDE]
            Image.fromarray(crop).save(flower_dir / f"{region}-q85-{subsampling}.png")
    print(f"wrote {len(PHOTOS)} HR photographs and {len(SUBSAMPLINGS) * len(REGIONS)} JPEG crops")


if __name__ == "__main__":
    main()
