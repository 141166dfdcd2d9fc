"""Every number of the Real-ESRGAN degradation model, with SeeSR's values as the defaults.

The defaults are SeeSR's ``params_realesrgan.yml``, which are Real-ESRGAN's own training
settings (Wang et al., ICCV-W 2021) plus a final sinc filter with probability 0.8. The
field names follow the paper's terms; the comment of each field gives the SeeSR key it
stands for, so a recipe from that family of papers can be carried over line by line.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field, model_validator

from megasr.model.config_files import ConfigRecord

KernelShape = Literal[
    "iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso"
]
ResizeMode = Literal["area", "bilinear", "bicubic"]
Range = tuple[float, float]

KERNEL_SIZES = (7, 9, 11, 13, 15, 17, 19, 21)
RESIZE_MODES: tuple[ResizeMode, ...] = ("area", "bilinear", "bicubic")


class BlurConfig(ConfigRecord):
    """The blur of one stage: a random kernel from a mixture of shapes, or a sinc."""

    probability: float = Field(1.0, ge=0.0, le=1.0)
    """Chance that the stage blurs at all (stage 1: always; SeeSR ``second_blur_prob``)."""
    kernel_sizes: tuple[int, ...] = KERNEL_SIZES
    """Odd kernel sides drawn uniformly (Real-ESRGAN's ``kernel_range``)."""
    kernel_probabilities: dict[KernelShape, float] = Field(
        default_factory=lambda: {
            "iso": 0.45,
            "aniso": 0.25,
            "generalized_iso": 0.12,
            "generalized_aniso": 0.03,
            "plateau_iso": 0.12,
            "plateau_aniso": 0.03,
        }
    )
    """``kernel_list`` / ``kernel_prob``: shapes and how often each is drawn."""
    sigma: Range = (0.2, 3.0)
    """``blur_sigma``: the Gaussian widths in pixels (both axes of anisotropic kernels)."""
    generalized_beta: Range = (0.5, 4.0)
    """``betag_range``: shape of generalized Gaussians (below 1 peaky, above 1 flat-topped)."""
    plateau_beta: Range = (1.0, 2.0)
    """``betap_range``: shape of plateau kernels."""
    sinc_probability: float = Field(0.1, ge=0.0, le=1.0)
    """``sinc_prob``: chance of a sinc (ringing) kernel instead of the mixture."""
    sinc_cutoff: Range = (math.pi / 5, math.pi)
    """Cutoff (radians per pixel) of sinc kernels of side ``sinc_small_kernel`` or more."""
    sinc_cutoff_small: Range = (math.pi / 3, math.pi)
    """Cutoff of smaller sinc kernels: they cannot hold a low cutoff's wide lobes."""
    sinc_small_kernel: int = 13

    @model_validator(mode="after")
    def _check(self) -> BlurConfig:
        _check_sizes(self.kernel_sizes, "kernel_sizes")
        _check_distribution(tuple(self.kernel_probabilities.values()), "kernel_probabilities")
        for name in ("sigma", "generalized_beta", "plateau_beta"):
            _check_range(getattr(self, name), name, positive=True)
        _check_range(self.sinc_cutoff, "sinc_cutoff", positive=True)
        _check_range(self.sinc_cutoff_small, "sinc_cutoff_small", positive=True)
        return self


class StageConfig(ConfigRecord):
    """One order of degradation: blur, resize, noise, JPEG."""

    blur: BlurConfig
    resize_probabilities: tuple[float, float, float]
    """``resize_prob``: chances of scaling up, down, or keeping the size."""
    resize_range: Range
    """``resize_range``: up draws a factor in (1, high), down in (low, 1)."""
    resize_modes: tuple[ResizeMode, ...] = RESIZE_MODES
    gaussian_noise_probability: float = Field(0.5, ge=0.0, le=1.0)
    """``gaussian_noise_prob``: Gaussian (read) noise, else Poisson (shot) noise."""
    noise_sigma: Range
    """``noise_range``: Gaussian standard deviation in 8-bit levels."""
    poisson_scale: Range
    """``poisson_scale_range``: multiplier of the Poisson noise."""
    gray_noise_probability: float = Field(0.4, ge=0.0, le=1.0)
    """``gray_noise_prob``: the same noise in every channel (luminance noise)."""
    jpeg_quality: tuple[int, int] = (30, 95)
    """``jpeg_range``: libjpeg quality, drawn as an integer in the closed range."""

    @model_validator(mode="after")
    def _check(self) -> StageConfig:
        _check_distribution(self.resize_probabilities, "resize_probabilities")
        low, high = _check_range(self.resize_range, "resize_range", positive=True)
        if not low <= 1.0 <= high:
            raise ValueError("resize_range must contain 1 (down below it, up above it)")
        if not self.resize_modes:
            raise ValueError("resize_modes must name at least one mode")
        _check_range(self.noise_sigma, "noise_sigma", positive=False)
        _check_range(self.poisson_scale, "poisson_scale", positive=False)
        quality = _check_range(self.jpeg_quality, "jpeg_quality", positive=True)
        if quality[1] > 100:
            raise ValueError("jpeg_quality must lie in 1..100")
        return self


def _first_stage() -> StageConfig:
    return StageConfig(
        blur=BlurConfig(probability=1.0, sigma=(0.2, 3.0)),
        resize_probabilities=(0.2, 0.7, 0.1),
        resize_range=(0.15, 1.5),
        noise_sigma=(1.0, 30.0),
        poisson_scale=(0.05, 3.0),
    )


def _second_stage() -> StageConfig:
    return StageConfig(
        blur=BlurConfig(probability=0.8, sigma=(0.2, 1.5)),
        resize_probabilities=(0.3, 0.4, 0.3),
        resize_range=(0.3, 1.2),
        noise_sigma=(1.0, 25.0),
        poisson_scale=(0.05, 2.5),
    )


class DegradationConfig(ConfigRecord):
    """The second-order pipeline: stage 1, stage 2 (sized relative to the LR), then the final
    resize to the LR size with a sinc filter and a JPEG, in either order."""

    scale: int = Field(4, ge=1, le=16)
    """The LR is ``1 / scale`` of the HR on each side."""
    first: StageConfig = Field(default_factory=_first_stage)
    second: StageConfig = Field(default_factory=_second_stage)
    final_sinc_probability: float = Field(0.8, ge=0.0, le=1.0)
    """``final_sinc_prob``: ringing from the final resize's filter."""
    final_sinc_kernel_sizes: tuple[int, ...] = KERNEL_SIZES
    final_sinc_cutoff: Range = (math.pi / 3, math.pi)
    final_resize_modes: tuple[ResizeMode, ...] = RESIZE_MODES
    resize_before_jpeg_probability: float = Field(0.5, ge=0.0, le=1.0)
    """Chance of [resize + sinc] then JPEG; otherwise JPEG then [resize + sinc]."""
    gray_probability: float = Field(0.0, ge=0.0, le=1.0)
    """``gray_prob``: chance that the LR is turned gray (0 in SeeSR's recipe)."""

    @model_validator(mode="before")
    @classmethod
    def _stage_defaults(cls, data: Any) -> Any:
        """A stage given in part keeps that stage's defaults for the rest (its blur too), so
        a file can say ``second.noise_sigma`` alone."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for name, default in (("first", _first_stage), ("second", _second_stage)):
            given = data.get(name)
            if isinstance(given, dict):
                merged = {**default().model_dump(), **given}
                if isinstance(given.get("blur"), dict):
                    merged["blur"] = {**default().blur.model_dump(), **given["blur"]}
                data[name] = merged
        return data

    @model_validator(mode="after")
    def _check(self) -> DegradationConfig:
        _check_sizes(self.final_sinc_kernel_sizes, "final_sinc_kernel_sizes")
        _check_range(self.final_sinc_cutoff, "final_sinc_cutoff", positive=True)
        if not self.final_resize_modes:
            raise ValueError("final_resize_modes must name at least one mode")
        return self

    @property
    def kernel_side(self) -> int:
        """The side every kernel of a batch is padded to (the largest size drawn anywhere)."""
        return max(
            *self.first.blur.kernel_sizes,
            *self.second.blur.kernel_sizes,
            *self.final_sinc_kernel_sizes,
        )


def _check_range(values: tuple[float, float], name: str, positive: bool) -> tuple[float, float]:
    low, high = values
    if low > high:
        raise ValueError(f"{name} must be (low, high) with low <= high, got {values}")
    if low < 0 or (positive and low <= 0):
        raise ValueError(f"{name} must be {'positive' if positive else 'non-negative'}")
    return low, high


def _check_distribution(probabilities: tuple[float, ...], name: str) -> None:
    if any(p < 0 for p in probabilities) or not math.isclose(sum(probabilities), 1.0):
        raise ValueError(f"{name} must be non-negative and sum to 1")


def _check_sizes(sizes: tuple[int, ...], name: str) -> None:
    if not sizes or any(size < 1 or size % 2 == 0 for size in sizes):
        raise ValueError(f"{name} must be odd positive kernel sides")
