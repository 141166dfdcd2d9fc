"""LR inputs for ``megasr eval``: the papers' bicubic downscale, or Real-ESRGAN's degradation.

``bicubic`` is the classic benchmark setting (MATLAB ``imresize``), where a network trained for
real photographs is not expected to win on PSNR. ``realesrgan`` is the second-order
degradation model of Real-ESRGAN (Wang et al., ICCV-W 2021): blur, resize, noise and JPEG,
twice, then a final resize to the LR size with a sinc filter, in random order with a last
JPEG. Its parameters are the paper's training configuration. The random draws of an image
come from the seed and the image's name only, so the same files give the same LR images on
every machine and in any order.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import cv2
import numpy as np

from megasr.errors import InvalidParameterError
from megasr.model.evaluation.blur_kernels import (
    KERNEL_SIZES,
    BlurRange,
    random_blur_kernel,
    sinc_kernel,
)
from megasr.model.evaluation.matlab_bicubic import imresize

DEGRADATIONS = ("bicubic", "realesrgan")
RESIZE_MODES = (cv2.INTER_AREA, cv2.INTER_LINEAR, cv2.INTER_CUBIC)
POISSON_LEVELS = 256  # photon counts per unit intensity: one per 8-bit level
FINAL_SINC_PROBABILITY = 0.8
FINAL_SINC_CUTOFF = (np.pi / 3, np.pi)
_GRAY = np.array([0.299, 0.587, 0.114], dtype=np.float32)


@dataclass(frozen=True)
class Stage:
    """One order of degradation: what blur, resize, noise and JPEG draw from.

    ``resize_probabilities`` are for up, down and keep; ``noise_sigma`` is in 8-bit levels;
    Gaussian noise is drawn with ``gaussian_probability``, Poisson noise otherwise.
    """

    blur_probability: float
    blur: BlurRange
    resize_probabilities: tuple[float, float, float]
    up_range: tuple[float, float]
    down_range: tuple[float, float]
    gaussian_probability: float
    noise_sigma: tuple[float, float]
    poisson_scale: tuple[float, float]
    gray_noise_probability: float
    jpeg_quality: tuple[int, int]


FIRST_STAGE = Stage(
    1.0, BlurRange((0.2, 3.0), 0.1), (0.2, 0.7, 0.1), (1.0, 1.5), (0.15, 1.0),
    0.5, (1.0, 30.0), (0.05, 3.0), 0.4, (30, 95),
)  # fmt: skip
SECOND_STAGE = Stage(
    0.8, BlurRange((0.2, 1.5), 0.1), (0.3, 0.4, 0.3), (1.0, 1.2), (0.3, 1.0),
    0.5, (1.0, 25.0), (0.05, 2.5), 0.4, (30, 95),
)  # fmt: skip


def degrade(hr: np.ndarray, kind: str, scale: int, seed: int, name: str) -> np.ndarray:
    """The uint8 LR image of ``hr`` (uint8, (H, W, 3), sides multiples of ``scale``)."""
    if kind == "bicubic":
        return bicubic_downscale(hr, scale)
    if kind == "realesrgan":
        return realesrgan_degrade(hr, scale, image_rng(seed, name))
    raise InvalidParameterError(f"unknown degradation {kind!r}; choose {' or '.join(DEGRADATIONS)}")


def image_rng(seed: int, name: str) -> np.random.Generator:
    """The random source of one image: the seed and the image's name, nothing else."""
    return np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(name.encode())]))


def bicubic_downscale(hr: np.ndarray, scale: int) -> np.ndarray:
    """MATLAB ``imresize(hr, 1 / scale, 'bicubic')``, rounded to uint8 as MATLAB stores it."""
    height, width = hr.shape[0] // scale, hr.shape[1] // scale
    return to_uint8(imresize(hr, height, width) / 255.0)


def realesrgan_degrade(hr: np.ndarray, scale: int, rng: np.random.Generator) -> np.ndarray:
    """Real-ESRGAN's second-order degradation of ``hr`` down to 1 / ``scale`` of its size."""
    height, width = hr.shape[:2]
    target = (height // scale, width // scale)
    image = hr.astype(np.float32) / 255.0
    image = _blur_resize_noise(image, FIRST_STAGE, rng, (height, width))
    image = _jpeg(image, _quality(rng, FIRST_STAGE))
    image = _blur_resize_noise(image, SECOND_STAGE, rng, target)
    sinc = None
    if rng.random() < FINAL_SINC_PROBABILITY:
        sinc = sinc_kernel(int(rng.choice(KERNEL_SIZES)), rng.uniform(*FINAL_SINC_CUTOFF))
    quality = _quality(rng, SECOND_STAGE)
    if rng.random() < 0.5:
        image = _jpeg(_final_resize(image, target, sinc, rng), quality)
    else:
        image = _final_resize(_jpeg(image, quality), target, sinc, rng)
    return to_uint8(image)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Floats in [0, 1] (overshoot clipped) to 8-bit, rounded to nearest."""
    return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


def _blur_resize_noise(
    image: np.ndarray, stage: Stage, rng: np.random.Generator, base: tuple[int, int]
) -> np.ndarray:
    """One stage's blur, resize (relative to ``base``) and noise."""
    if rng.random() < stage.blur_probability:
        image = _filter(image, random_blur_kernel(rng, stage.blur))
    direction = rng.choice(3, p=stage.resize_probabilities)
    factor = 1.0
    if direction == 0:
        factor = rng.uniform(*stage.up_range)
    elif direction == 1:
        factor = rng.uniform(*stage.down_range)
    size = (max(1, int(base[1] * factor)), max(1, int(base[0] * factor)))
    image = cv2.resize(image, size, interpolation=int(rng.choice(RESIZE_MODES)))
    return _add_noise(image, stage, rng)


def _add_noise(image: np.ndarray, stage: Stage, rng: np.random.Generator) -> np.ndarray:
    """Gaussian (read) or Poisson (shot) noise, in color or the same in every channel."""
    gray = rng.random() < stage.gray_noise_probability
    if rng.random() < stage.gaussian_probability:
        sigma = rng.uniform(*stage.noise_sigma) / 255.0
        shape = (*image.shape[:2], 1) if gray else image.shape
        noise = rng.normal(0.0, sigma, shape)
    else:
        signal = (image @ _GRAY)[..., None] if gray else image
        signal = np.round(np.clip(signal, 0.0, 1.0) * 255.0) / 255.0
        counts = rng.poisson(signal * POISSON_LEVELS) / POISSON_LEVELS
        noise = (counts - signal) * rng.uniform(*stage.poisson_scale)
    return np.clip(image + noise, 0.0, 1.0).astype(np.float32)


def _final_resize(
    image: np.ndarray, target: tuple[int, int], sinc: np.ndarray | None, rng: np.random.Generator
) -> np.ndarray:
    mode = int(rng.choice(RESIZE_MODES))
    image = cv2.resize(image, (target[1], target[0]), interpolation=mode)
    return image if sinc is None else _filter(image, sinc)


def _quality(rng: np.random.Generator, stage: Stage) -> int:
    return int(rng.integers(stage.jpeg_quality[0], stage.jpeg_quality[1], endpoint=True))


def _filter(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    filtered = cv2.filter2D(image, -1, kernel.astype(np.float32), borderType=cv2.BORDER_REFLECT_101)
    return filtered.astype(np.float32)


def _jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    """A real libjpeg round trip (OpenCV's encoder wants BGR, so chroma is where it belongs)."""
    bgr = np.ascontiguousarray(to_uint8(image)[..., ::-1])
    ok, encoded = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("OpenCV could not encode a JPEG")
    decoded = cv2.imdecode(encoded, cv2.IMREAD_COLOR)
    return decoded[..., ::-1].astype(np.float32) / 255.0
