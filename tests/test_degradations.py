"""LR images for ``megasr eval``: MATLAB bicubic and the seeded Real-ESRGAN degradation."""

from __future__ import annotations

import numpy as np
import pytest

from megasr.errors import InvalidParameterError
from megasr.model.evaluation.blur_kernels import BlurRange, random_blur_kernel, sinc_kernel
from megasr.model.evaluation.degradations import degrade
from megasr.model.evaluation.matlab_bicubic import imresize
from megasr.model.metrics.matlab_resize import halve


@pytest.fixture(scope="module")
def photo(coffee) -> np.ndarray:
    return coffee[:192, 160:352]


def test_realesrgan_degradation_is_fixed_by_the_seed_and_the_name(photo):
    first = degrade(photo, "realesrgan", 4, seed=7, name="coffee")
    assert first.shape == (48, 48, 3) and first.dtype == np.uint8
    assert np.array_equal(first, degrade(photo, "realesrgan", 4, seed=7, name="coffee"))
    assert not np.array_equal(first, degrade(photo, "realesrgan", 4, seed=8, name="coffee"))
    assert not np.array_equal(first, degrade(photo, "realesrgan", 4, seed=7, name="cup"))


def test_realesrgan_degradation_loses_more_than_bicubic(photo):
    """Blur, noise and JPEG on top of the downscale: the LR strays further from bicubic's."""
    bicubic = degrade(photo, "bicubic", 4, seed=0, name="coffee").astype(float)
    for seed in range(3):
        real = degrade(photo, "realesrgan", 4, seed=seed, name="coffee").astype(float)
        assert np.abs(real - bicubic).mean() > 2.0


def test_bicubic_matches_the_metrics_own_matlab_halving():
    """Two implementations of MATLAB's antialiased bicubic, one general, one for x0.5."""
    image = np.random.default_rng(0).random((40, 36)) * 255
    assert np.abs(imresize(image, 20, 18) - halve(image)).max() < 1e-9


def test_bicubic_keeps_flat_images_flat_and_ramps_linear():
    assert np.allclose(imresize(np.full((8, 12, 3), 90.0), 32, 48), 90.0)
    ramp = np.tile(np.arange(64.0), (4, 1))
    # Output pixel j of a x1/4 sits at input 4j + 1.5; edges mirror, so check the inside.
    assert np.allclose(imresize(ramp, 1, 16)[0, 3:-3], 4 * np.arange(3, 13) + 1.5)
    # Upscaling x4: output pixel j samples input (j + 0.5) / 4 - 0.5.
    small = np.tile(np.arange(16.0), (4, 1))
    assert np.allclose(imresize(small, 1, 64)[0, 8:56], (np.arange(8, 56) + 0.5) / 4 - 0.5)


def test_blur_kernels_are_normalised_and_point_symmetric():
    rng = np.random.default_rng(1)
    for _ in range(20):
        kernel = random_blur_kernel(rng, BlurRange((0.2, 3.0), sinc_probability=0.3))
        assert kernel.shape[0] == kernel.shape[1] and kernel.shape[0] % 2 == 1
        assert np.isclose(kernel.sum(), 1.0)
        assert np.allclose(kernel, kernel[::-1, ::-1])  # correlation equals convolution
    sinc = sinc_kernel(21, np.pi / 3)
    assert sinc.argmax() == sinc.size // 2 and sinc.min() < 0  # a low-pass with ringing lobes


def test_unknown_degradation_is_refused(photo):
    with pytest.raises(InvalidParameterError, match="unknown degradation"):
        degrade(photo, "gaussian", 4, seed=0, name="x")
