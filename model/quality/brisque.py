"""BRISQUE (Mittal, Moorthy and Bovik, 2012) through OpenCV's quality module.

The score comes from an SVM regressor trained on the LIVE database; its model and feature
ranges are data files that OpenCV publishes with its samples and Debian ships in
``opencv-doc`` (``examples/quality``, possibly gzipped). The folder is the
``brisque_model_dir`` setting. ``cv2.quality`` exists only in the contrib builds of OpenCV
(``opencv-contrib-python-headless``); a plain ``opencv-python`` installed over it hides it.
Lower is better; typical photographs score 0 to 50.
"""

from __future__ import annotations

import gzip
import tempfile
from pathlib import Path

import numpy as np

from megasr.errors import EngineError
from megasr.model.quality.pixels import to_uint8
from megasr.settings import get_settings

MODEL_FILE = "brisque_model_live.yml"
RANGE_FILE = "brisque_range_live.yml"


def brisque(
    image: np.ndarray, *, model_dir: Path | None = None, cache_dir: Path | None = None
) -> float:
    """The BRISQUE score of ``image`` (RGB or gray), from its 8-bit pixels."""
    reason = unavailable_reason(model_dir)
    if reason is not None:
        raise EngineError(f"BRISQUE is not available: {reason}")
    import cv2

    model_path, range_path = model_files(model_dir, cache_dir)
    pixels = to_uint8(image)
    if pixels.ndim == 3:
        pixels = np.ascontiguousarray(pixels[..., ::-1])  # OpenCV takes colour as BGR
    score = cv2.quality.QualityBRISQUE_compute(pixels, str(model_path), str(range_path))
    return float(score[0])


def unavailable_reason(model_dir: Path | None = None) -> str | None:
    """Why BRISQUE cannot run here, or None when it can."""
    try:
        import cv2
    except ImportError:
        return "OpenCV is not installed (pip install opencv-contrib-python-headless)"
    if not hasattr(cv2, "quality"):
        return (
            "this OpenCV build has no quality module: install opencv-contrib-python-headless "
            "(again, if opencv-python was installed after it)"
        )
    folder = model_dir or get_settings().brisque_model_dir
    for name in (MODEL_FILE, RANGE_FILE):
        if not (folder / name).is_file() and not (folder / f"{name}.gz").is_file():
            return f"{name} is not in {folder} (apt-get install opencv-doc)"
    return None


def model_files(model_dir: Path | None = None, cache_dir: Path | None = None) -> tuple[Path, Path]:
    """Paths OpenCV can open for the model and range files, unpacking gzipped ones once."""
    folder = model_dir or get_settings().brisque_model_dir
    cache = cache_dir or get_settings().cache_dir
    return _plain_file(folder, MODEL_FILE, cache), _plain_file(folder, RANGE_FILE, cache)


def _plain_file(folder: Path, name: str, cache_dir: Path) -> Path:
    plain = folder / name
    if plain.is_file():
        return plain
    packed = folder / f"{name}.gz"
    if not packed.is_file():
        raise EngineError(f"BRISQUE needs {name} in {folder}: install Debian's opencv-doc")
    unpacked = cache_dir / "assets" / "brisque" / name
    if not unpacked.is_file():
        unpacked.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=unpacked.parent, delete=False) as partial:
            partial.write(gzip.decompress(packed.read_bytes()))
        Path(partial.name).replace(unpacked)
    return unpacked
