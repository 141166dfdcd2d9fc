"""Write the photographs the HED fine-tuning of docs/training.md trains and measures on.

Every file ships in a package the project's CI already installs: scikit-image (the dev
extra) and Debian's ``opencv-doc`` (``.ci/run`` installs it). Natural photographs only (and
two paintings among the training images); charts, logos, text and synthetic scenes are
left out. ``held-out/`` is never trained on, and no held-out scene appears in ``train/``; of
stereo pairs and image sequences only one view is used.

    .venv/bin/python bench/pgft_photos.py OUT_DIR
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data

OPENCV = Path("/usr/share/doc/opencv-doc/examples/data")
TRAIN_OPENCV = (
    "aero1.jpg", "aloeL.jpg", "apple.jpg", "board.jpg", "butterfly.jpg", "ela_original.jpg",
    "graf1.png", "HappyFish.jpg", "home.jpg", "leuvenA.jpg", "orange.jpg", "rubberwhale1.png",
    "smarties.png", "squirrel_cls.jpg", "starry_night.jpg", "stuff.jpg",
)  # fmt: skip
TRAIN_SKIMAGE = {
    "astronaut": data.astronaut,
    "rocket": data.rocket,
    "motorcycle": lambda: data.stereo_motorcycle()[0],
}
HELD_OUT_OPENCV = ("baboon.jpg", "building.jpg", "fruits.jpg", "messi5.jpg")
HELD_OUT_SKIMAGE = {"chelsea": data.chelsea, "coffee": data.coffee}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    for split, files, loaders in (
        ("train", TRAIN_OPENCV, TRAIN_SKIMAGE),
        ("held-out", HELD_OUT_OPENCV, HELD_OUT_SKIMAGE),
    ):
        folder = args.out / split
        folder.mkdir(parents=True, exist_ok=True)
        for name in files:
            rgb = Image.open(OPENCV / name).convert("RGB")
            rgb.save(folder / f"opencv-{Path(name).stem}.png")
        for name, load in loaders.items():
            Image.fromarray(np.asarray(load())).save(folder / f"skimage-{name}.png")
        print(f"{split}: {len(files) + len(loaders)} photographs in {folder}")


if __name__ == "__main__":
    main()
