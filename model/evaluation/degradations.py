"""LR inputs for ``megasr eval``: the papers' bicubic downscale, or Real-ESRGAN's degradation.

``bicubic`` is the classic benchmark setting (MATLAB ``imresize``), where a network trained for
real photographs is not expected to win on PSNR. ``realesrgan`` is the second-order
degradation model that training uses too (:mod:`megasr.model.degradation`, SeeSR's
parameters). The random draws of an image come from the seed and the image's name only, so
the same files give the same LR images on every machine and in any order.
"""

from __future__ import annotations

import zlib

import numpy as np
import torch

from megasr.errors import InvalidParameterError
from megasr.model.degradation import DegradationConfig, RealESRGANDegradation
from megasr.model.degradation.draws import derived_generator
from megasr.model.evaluation.matlab_bicubic import imresize

DEGRADATIONS = ("bicubic", "realesrgan")


def degrade(hr: np.ndarray, kind: str, scale: int, seed: int, name: str) -> np.ndarray:
    """The uint8 LR image of ``hr`` (uint8, (H, W, 3), sides multiples of ``scale``)."""
    if kind == "bicubic":
        return bicubic_downscale(hr, scale)
    if kind == "realesrgan":
        return realesrgan_degrade(hr, scale, image_generator(seed, name))
    raise InvalidParameterError(f"unknown degradation {kind!r}; choose {' or '.join(DEGRADATIONS)}")


def image_generator(seed: int, name: str) -> torch.Generator:
    """The random source of one image: the seed and the image's name, nothing else."""
    return derived_generator(seed, zlib.crc32(name.encode()))


def bicubic_downscale(hr: np.ndarray, scale: int) -> np.ndarray:
    """MATLAB ``imresize(hr, 1 / scale, 'bicubic')``, rounded to uint8 as MATLAB stores it."""
    height, width = hr.shape[0] // scale, hr.shape[1] // scale
    return to_uint8(imresize(hr, height, width) / 255.0)


def realesrgan_degrade(hr: np.ndarray, scale: int, generator: torch.Generator) -> np.ndarray:
    """Real-ESRGAN's second-order degradation of ``hr`` down to 1 / ``scale`` of its size."""
    degradation = RealESRGANDegradation(DegradationConfig(scale=scale))
    image = torch.from_numpy(np.ascontiguousarray(hr)).permute(2, 0, 1)[None].float() / 255.0
    return to_uint8(degradation(image, generator)[0].permute(1, 2, 0).numpy())


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Floats in [0, 1] (overshoot clipped) to 8-bit, rounded to nearest."""
    return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
