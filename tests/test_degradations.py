"""LR images: MATLAB bicubic, and the Real-ESRGAN degradation that eval and training share."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from megasr.errors import InvalidParameterError
from megasr.model.config_files import parse_config
from megasr.model.degradation import DegradationConfig, RealESRGANDegradation
from megasr.model.degradation.jpeg import jpeg_round_trip, quantization_tables
from megasr.model.degradation.kernels import SHAPES, draw_blur_kernels
from megasr.model.degradation.noise import add_noise, luma
from megasr.model.evaluation.degradations import degrade
from megasr.model.evaluation.matlab_bicubic import imresize
from megasr.model.quality.matlab_resize import halve

SEEDS = 300
BATCH = 8


@pytest.fixture(scope="module")
def photo(coffee) -> np.ndarray:
    return coffee[:192, 160:352]


@pytest.fixture(scope="module")
def photo_batch(coffee) -> torch.Tensor:
    """Four different 96x96 crops of a real photograph, (4, 3, 96, 96) in [0, 1]."""
    crops = [coffee[y : y + 96, x : x + 96] for y, x in ((0, 0), (150, 200), (250, 400), (60, 480))]
    return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 255.0


@pytest.fixture(scope="module")
def draws():
    """A degradation drawn for SEEDS batches of BATCH images: per-image and per-batch draws."""
    degradation = RealESRGANDegradation()
    return [degradation.draw(BATCH, torch.Generator().manual_seed(s)) for s in range(SEEDS)]


def _near(observed: torch.Tensor, probability: float) -> None:
    """A frequency within 4.5 binomial standard deviations of ``probability``."""
    values = observed.flatten().double()
    sigma = math.sqrt(probability * (1 - probability) / values.numel())
    assert abs(float(values.mean()) - probability) <= 4.5 * sigma + 1e-12, (
        f"frequency {float(values.mean()):.4f}, expected {probability}"
    )


def test_kernels_sum_to_one_are_point_symmetric_and_fit_their_size():
    config = DegradationConfig()
    for blur in (config.first.blur, config.second.blur):
        draw = draw_blur_kernels(blur, 400, config.kernel_side, torch.Generator().manual_seed(1))
        kernels = draw.kernels.double()
        assert torch.allclose(kernels.sum(dim=(-2, -1)), torch.ones(400, dtype=torch.float64))
        assert torch.allclose(kernels, kernels.flip(-2, -1), atol=1e-7)
        centre = config.kernel_side // 2
        for kernel, size in zip(kernels, draw.sizes.tolist(), strict=True):
            half = size // 2
            inside = kernel[centre - half : centre + half + 1, centre - half : centre + half + 1]
            assert torch.isclose(inside.sum(), torch.tensor(1.0, dtype=torch.float64))
        mixture = kernels[~draw.sinc]  # non-negative, peaked at the centre
        assert mixture.min() >= 0
        assert mixture.flatten(1).argmax(1).eq(centre * config.kernel_side + centre).all()
        assert kernels[draw.sinc].min() < 0  # sinc kernels ring


def test_each_stage_is_applied_at_its_probability(draws):
    config = DegradationConfig()
    cat = torch.cat
    _near(cat([d.first.blurred for d in draws]), 1.0)
    _near(cat([d.second.blurred for d in draws]), 0.8)
    for stage in ("first", "second"):
        stages = [getattr(d, stage) for d in draws]
        _near(cat([s.kernels.sinc for s in stages]), 0.1)
        shapes = cat([s.kernels.shapes[~s.kernels.sinc] for s in stages])
        for index, name in enumerate(SHAPES):
            _near(shapes == index, config.first.blur.kernel_probabilities[name])
        _near(cat([s.gaussian for s in stages]), 0.5)
        _near(cat([s.gray_noise for s in stages]), 0.4)
        expected = getattr(config, stage).resize_probabilities
        for direction, probability in zip(("up", "down", "keep"), expected, strict=True):
            _near(torch.tensor([s.direction == direction for s in stages]), probability)
        quality = cat([s.jpeg_quality for s in stages])
        assert quality.min() == 30 and quality.max() == 95
    _near(cat([d.final_sinc for d in draws]), 0.8)
    _near(torch.tensor([d.resize_before_jpeg for d in draws]), 0.5)
    assert not cat([d.gray for d in draws]).any()  # SeeSR's recipe never turns the LR gray


def test_resize_factors_and_noise_levels_stay_in_their_ranges(draws):
    first = [d.first for d in draws]
    ups = [s.factor for s in first if s.direction == "up"]
    downs = [s.factor for s in first if s.direction == "down"]
    assert min(ups) >= 1.0 and max(ups) <= 1.5 and min(downs) >= 0.15 and max(downs) <= 1.0
    assert all(s.factor == 1.0 for s in first if s.direction == "keep")
    sigma = torch.cat([d.second.sigma for d in draws])
    assert sigma.min() >= 1.0 and sigma.max() <= 25.0
    assert {s.resize_mode for s in first} == {"area", "bilinear", "bicubic"}


def test_lr_images_are_quarter_size_8_bit_levels_in_0_1(photo_batch):
    degradation = RealESRGANDegradation()
    for seed in range(4):
        lr = degradation(photo_batch, torch.Generator().manual_seed(seed))
        assert lr.shape == (4, 3, 24, 24) and lr.dtype == torch.float32
        assert lr.min() >= 0.0 and lr.max() <= 1.0
        assert torch.equal(lr * 255, (lr * 255).round())


def test_same_seed_same_output_and_another_seed_another(photo_batch):
    degradation = RealESRGANDegradation()
    first = degradation(photo_batch, torch.Generator().manual_seed(5))
    assert torch.equal(first, degradation(photo_batch, torch.Generator().manual_seed(5)))
    assert not torch.equal(first, degradation(photo_batch, torch.Generator().manual_seed(6)))


def test_with_every_stage_off_it_is_a_plain_bicubic_downscale(photo_batch):
    """Composition check: no blur, no resize, no noise, no sinc, quality-100 JPEG."""
    still = {
        "blur": {"probability": 0.0},
        "resize_probabilities": [0, 0, 1],
        "noise_sigma": [0, 0],
        "poisson_scale": [0, 0],
        "gaussian_noise_probability": 1.0,
        "jpeg_quality": [100, 100],
    }
    config = DegradationConfig.model_validate(
        {
            "first": still,
            # Stage 2 sizes to the LR size even when it "keeps": that is the downscale.
            "second": {**still, "resize_modes": ["bicubic"]},
            "final_sinc_probability": 0.0,
            "final_resize_modes": ["bicubic"],
        }
    )
    lr = RealESRGANDegradation(config)(photo_batch, torch.Generator().manual_seed(0))
    expected = F.interpolate(photo_batch, size=(24, 24), mode="bicubic", align_corners=False)
    # JPEG's 4:2:0 chroma subsampling loses colour detail at any quality, so compare luma,
    # which three quality-100 round trips leave within about half a level.
    assert (luma(lr) - luma(expected.clamp(0, 1))).abs().mean() < 1.0 / 255


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: CPU/GPU not compared")
def test_cpu_and_gpu_agree(photo_batch):
    """The draw is made on the CPU for both; without noise fields the LR images must agree."""
    config = DegradationConfig.model_validate(
        {"first": {"noise_sigma": [0, 0], "poisson_scale": [0, 0]},
         "second": {"noise_sigma": [0, 0], "poisson_scale": [0, 0]}}
    )  # fmt: skip
    degradation = RealESRGANDegradation(config)
    for seed in range(3):
        draw = degradation.draw(4, torch.Generator().manual_seed(seed))
        cpu = degradation.apply(photo_batch, draw)
        gpu = degradation.apply(photo_batch.cuda(), draw).cpu()
        assert (cpu - gpu).abs().mean() < 0.5 / 255


def test_jpeg_follows_libjpeg(coffee):
    """Against OpenCV's libjpeg round trip: the same artefacts, to within rounding."""
    image = coffee[40:243, 100:417]  # odd sides: partial blocks and MCUs
    tensor = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0
    for quality in (30, 60, 95):
        ok, encoded = cv2.imencode(
            ".jpg", image[..., ::-1].copy(), [cv2.IMWRITE_JPEG_QUALITY, quality]
        )
        assert ok
        reference = cv2.imdecode(encoded, cv2.IMREAD_COLOR)[..., ::-1].astype(np.float64)
        ours = jpeg_round_trip(tensor, torch.tensor([quality]))[0].permute(1, 2, 0).double()
        difference = np.abs(ours.numpy() * 255 - reference).mean()
        loss = np.abs(reference - image).mean()  # what the JPEG itself changed
        assert difference < 0.5 and difference < 0.2 * loss, (quality, difference, loss)


def test_quantization_tables_scale_as_libjpeg():
    tables = quantization_tables(torch.tensor([50, 100, 10]))
    assert tables[0, 0, 0, 0] == 16 and tables[0, 1, 7, 7] == 99  # q50: the standard tables
    assert torch.all(tables[1] == 1)
    assert tables[2, 0, 0, 0] == 80 and tables[2, 1, 7, 7] == 255  # q10: x5, clamped


def test_gaussian_noise_has_its_sigma_and_gray_noise_is_the_same_in_every_channel():
    flat = torch.full((2, 3, 128, 128), 0.5)
    generator = torch.Generator().manual_seed(0)
    yes, no = torch.tensor([True, True]), torch.tensor([False, True])
    noisy = add_noise(flat, yes, torch.tensor([20.0, 20.0]), torch.zeros(2), no, generator)
    noise = noisy - flat
    assert abs(float(noise[0].std()) * 255 - 20.0) < 0.5
    assert not torch.equal(noise[0, 0], noise[0, 1])
    assert torch.equal(noise[1, 0], noise[1, 1]) and torch.equal(noise[1, 1], noise[1, 2])


def test_poisson_noise_grows_with_the_signal():
    ramp = torch.linspace(0, 1, 256).repeat(256, 1)[None, None].repeat(1, 3, 1, 1)
    noisy = add_noise(
        ramp,
        torch.tensor([False]),
        torch.zeros(1),
        torch.tensor([1.0]),
        torch.tensor([False]),
        torch.Generator().manual_seed(0),
    )
    noise = noisy - ramp
    dark, bright = noise[..., 8:40].var(), noise[..., 180:212].var()
    # Shot noise variance is the signal over 256 levels: ~0.09 / 256 vs ~0.76 / 256.
    assert 5 < float(bright / dark) < 12


def test_partial_stage_settings_keep_the_stage_defaults_and_bad_ones_are_one_line_errors():
    config = parse_config({"second": {"noise_sigma": [1, 20]}}, DegradationConfig, "test.toml")
    assert config.second.noise_sigma == (1.0, 20.0)
    assert config.second.blur.probability == 0.8 and config.second.resize_range == (0.3, 1.2)
    with pytest.raises(InvalidParameterError, match=r"^test.toml: first: resize_probabilities"):
        parse_config({"first": {"resize_probabilities": [1, 1, 1]}}, DegradationConfig, "test.toml")
    with pytest.raises(InvalidParameterError, match="final_sink_probability: unknown key"):
        parse_config({"final_sink_probability": 0.1}, DegradationConfig, "test.toml")


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


def test_unknown_degradation_is_refused(photo):
    with pytest.raises(InvalidParameterError, match="unknown degradation"):
        degrade(photo, "gaussian", 4, seed=0, name="x")
