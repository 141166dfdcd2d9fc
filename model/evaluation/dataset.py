"""The images of one evaluation: HR ground truth and LR inputs, paired by file name.

Three ways in, as in the SR papers: HR and LR folders (a real paired set), HR alone (the LR
is made by a degradation), or LR alone (real inputs with no ground truth, scored by
no-reference metrics only). Every image is held as 8-bit RGB, the form the papers score.
HR sides are cropped down to multiples of the scale ("modcrop"), so an LR image is exactly
1 / scale of its HR.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from megasr.errors import InvalidParameterError
from megasr.imaging.decode import decode_image
from megasr.imaging.image import ImageLimits
from megasr.model.evaluation.degradations import degrade, to_uint8


@dataclass(frozen=True)
class EvalImage:
    """One LR input and, when there is one, its HR ground truth (uint8, (H, W, 3))."""

    name: str
    lr: np.ndarray
    hr: np.ndarray | None

    def output_size(self, scale: int) -> tuple[int, int]:
        """(height, width) every method must return: the HR's, else ``scale`` times the LR."""
        if self.hr is not None:
            return self.hr.shape[0], self.hr.shape[1]
        return self.lr.shape[0] * scale, self.lr.shape[1] * scale


def load_images(
    hr_files: list[Path],
    lr_files: list[Path],
    scale: int,
    degradation: str,
    seed: int,
    limits: ImageLimits,
) -> list[EvalImage]:
    """Pair or make the images; ``degradation`` and ``seed`` apply only without LR files."""
    hr = _by_name(hr_files)
    lr = _by_name(lr_files)
    if hr and lr and hr.keys() != lr.keys():
        unpaired = sorted(hr.keys() ^ lr.keys())
        raise InvalidParameterError(f"HR and LR folders do not pair up: {', '.join(unpaired)}")
    images = []
    for name in sorted(hr or lr):
        high = modcrop(read_rgb8(hr[name], limits), scale) if hr else None
        if lr:
            low = read_rgb8(lr[name], limits)
            _check_pair(name, high, low, scale)
        else:
            low = degrade(high, degradation, scale, seed, name)
        images.append(EvalImage(name, low, high))
    return images


def read_rgb8(path: Path, limits: ImageLimits) -> np.ndarray:
    """A file as 8-bit RGB: gray expanded, alpha dropped, 16-bit rounded to 8."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise InvalidParameterError(f"{path}: cannot read the file: {error.strerror}") from error
    return to_uint8(decode_image(data, limits).rgb)


def modcrop(image: np.ndarray, scale: int) -> np.ndarray:
    """``image`` cut at the bottom and right to sides that ``scale`` divides."""
    height, width = image.shape[0] // scale * scale, image.shape[1] // scale * scale
    if height == 0 or width == 0:
        raise InvalidParameterError(
            f"an HR image of {image.shape[1]}x{image.shape[0]} is smaller than x{scale}"
        )
    return image[:height, :width]


def _by_name(files: list[Path]) -> dict[str, Path]:
    named: dict[str, Path] = {}
    for path in files:
        if path.stem in named:
            raise InvalidParameterError(
                f"two images are named {path.stem!r}: {named[path.stem]} and {path}"
            )
        named[path.stem] = path
    return named


def _check_pair(name: str, hr: np.ndarray | None, lr: np.ndarray, scale: int) -> None:
    if hr is None:
        return
    expected = (lr.shape[0] * scale, lr.shape[1] * scale)
    if hr.shape[:2] != expected:
        raise InvalidParameterError(
            f"{name}: HR {hr.shape[1]}x{hr.shape[0]} (cropped to multiples of {scale}) is not "
            f"{scale} times the LR {lr.shape[1]}x{lr.shape[0]}"
        )
