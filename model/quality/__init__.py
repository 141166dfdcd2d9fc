"""Image quality metrics for ``megasr eval``, one module per metric, one registry of them all.

Full-reference metrics compare a result with its ground truth (PSNR, SSIM, LPIPS); no-reference
metrics score a result alone (NIQE, BRISQUE, PIQE, MUSIQ, ...); FID compares two sets of
images. Every entry says whether it can run here, and if not, why, so an evaluation can
report "not available: <reason>" and go on with the rest.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Literal

import numpy as np

from megasr.errors import InvalidParameterError
from megasr.model.quality import brisque, learned, lpips
from megasr.model.quality.niqe import niqe
from megasr.model.quality.piqe import piqe
from megasr.model.quality.pixels import crop_border
from megasr.model.quality.psnr import psnr
from megasr.model.quality.ssim import ssim

Kind = Literal["full-reference", "no-reference", "distribution"]
Better = Literal["higher", "lower"]


@dataclass(frozen=True)
class Availability:
    """Whether a metric can run here; truthy when it can, with the reason when it cannot."""

    ok: bool
    reason: str = ""

    def __bool__(self) -> bool:
        return self.ok


def _always() -> Availability:
    return Availability(True)


def _unless(reason: Callable[[], str | None]) -> Callable[[], Availability]:
    def available() -> Availability:
        why = reason()
        return Availability(why is None, why or "")

    return available


@dataclass(frozen=True)
class Metric:
    """One registered metric.

    ``function`` takes ``(image, reference, crop=...)`` for a full-reference metric and
    ``(image)`` for a no-reference one; :meth:`score` calls either the same way.
    """

    name: str
    kind: Kind
    function: Callable[..., float]
    available: Callable[[], Availability]
    better: Better

    def score(
        self, image: np.ndarray, reference: np.ndarray | None = None, *, crop: int = 0
    ) -> float:
        """The metric on one image, ``crop`` pixels off each border first."""
        if self.kind == "no-reference":
            return self.function(crop_border(image, crop))
        if self.kind == "distribution":
            raise InvalidParameterError(f"{self.name} compares sets of images, not one image")
        if reference is None:
            raise InvalidParameterError(f"{self.name} needs a reference image")
        return self.function(image, reference, crop=crop)


def _learned(name: str, kind: Kind, better: Better) -> Metric:
    return Metric(
        name,
        kind,
        learned.refusal(name),
        _unless(partial(learned.unavailable_reason, name)),
        better,
    )


METRICS: dict[str, Metric] = {
    metric.name: metric
    for metric in (
        Metric("psnr", "full-reference", psnr, _always, "higher"),
        Metric("ssim", "full-reference", ssim, _always, "higher"),
        Metric("niqe", "no-reference", niqe, _always, "lower"),
        Metric(
            "brisque", "no-reference", brisque.brisque, _unless(brisque.unavailable_reason), "lower"
        ),
        Metric("piqe", "no-reference", piqe, _always, "lower"),
        Metric("lpips", "full-reference", lpips.lpips, _unless(lpips.unavailable_reason), "lower"),
        _learned("dists", "full-reference", "lower"),
        _learned("musiq", "no-reference", "higher"),
        _learned("maniqa", "no-reference", "higher"),
        _learned("clipiqa", "no-reference", "higher"),
        _learned("fid", "distribution", "lower"),
    )
}


def get_metric(name: str) -> Metric:
    """The metric called ``name`` (case-insensitive)."""
    try:
        return METRICS[name.lower()]
    except KeyError:
        known = ", ".join(METRICS)
        raise InvalidParameterError(f"unknown metric {name!r}; known: {known}") from None
