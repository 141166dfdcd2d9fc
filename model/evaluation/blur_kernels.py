"""The blur kernels of Real-ESRGAN's degradation model (Wang et al., ICCV-W 2021, section 3).

Camera blur is modelled by a random 2-D kernel: a Gaussian, a generalized Gaussian (sharper
or flatter top, shape ``beta``) or a plateau-shaped one, isotropic or rotated anisotropic,
and sometimes a sinc (ideal low-pass) kernel, which produces the ringing and overshoot that
sharpening and JPEG add to real photographs. Kernels are odd-sized and sum to one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.special import j1

# (shape, isotropic, probability) as in the paper's training configuration.
KERNEL_CHOICES = (
    ("gaussian", True, 0.45),
    ("gaussian", False, 0.25),
    ("generalized", True, 0.12),
    ("generalized", False, 0.03),
    ("plateau", True, 0.12),
    ("plateau", False, 0.03),
)
KERNEL_SIZES = np.arange(7, 22, 2)
# The range of each shape's ``beta``; a Gaussian is the generalized shape at beta = 1.
BETA = {"gaussian": (1.0, 1.0), "generalized": (0.5, 4.0), "plateau": (1.0, 2.0)}


@dataclass(frozen=True)
class BlurRange:
    """What one degradation stage draws its blur from."""

    sigma: tuple[float, float]
    sinc_probability: float


def random_blur_kernel(rng: np.random.Generator, blur: BlurRange) -> np.ndarray:
    """One kernel drawn as Real-ESRGAN draws them for a degradation stage."""
    size = int(rng.choice(KERNEL_SIZES))
    if rng.random() < blur.sinc_probability:
        # Small kernels cannot hold a low cutoff's wide lobes, so they get high cutoffs only.
        low = math.pi / 3 if size < 13 else math.pi / 5
        return sinc_kernel(size, rng.uniform(low, math.pi))
    index = rng.choice(len(KERNEL_CHOICES), p=[p for *_, p in KERNEL_CHOICES])
    shape, isotropic, _ = KERNEL_CHOICES[index]
    sigma_x = rng.uniform(*blur.sigma)
    sigma_y, angle = sigma_x, 0.0
    if not isotropic:
        sigma_y, angle = rng.uniform(*blur.sigma), rng.uniform(-math.pi, math.pi)
    return anisotropic_kernel(size, sigma_x, sigma_y, angle, shape, rng.uniform(*BETA[shape]))


def anisotropic_kernel(
    size: int, sigma_x: float, sigma_y: float, angle: float, shape: str, beta: float
) -> np.ndarray:
    """A kernel on the quadratic form d = x' S^-1 x of a rotated covariance S.

    ``gaussian`` is exp(-d / 2); ``generalized`` exp(-d^beta / 2), beta < 1 a sharper peak
    with heavier tails, beta > 1 a flatter top; ``plateau`` 1 / (1 + d^beta).
    """
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    covariance = rotation @ np.diag([sigma_x**2, sigma_y**2]) @ rotation.T
    grid = np.arange(size) - size // 2
    xy = np.stack(np.meshgrid(grid, grid), axis=-1).astype(np.float64)
    distance = np.einsum("...i,ij,...j->...", xy, np.linalg.inv(covariance), xy)
    if shape == "plateau":
        kernel = 1.0 / (1.0 + distance**beta)
    else:
        kernel = np.exp(-0.5 * distance**beta)
    return kernel / kernel.sum()


def sinc_kernel(size: int, cutoff: float) -> np.ndarray:
    """The ideal circular low-pass filter with angular ``cutoff`` (radians per pixel)."""
    grid = np.arange(size) - size // 2
    radius = np.hypot(*np.meshgrid(grid, grid))
    with np.errstate(divide="ignore", invalid="ignore"):
        kernel = cutoff * j1(cutoff * radius) / (2 * math.pi * radius)
    kernel[size // 2, size // 2] = cutoff**2 / (4 * math.pi)  # the limit at r = 0
    return kernel / kernel.sum()
