"""Run methods over an image set and score their outputs: the rows of an evaluation table.

A method maps an 8-bit LR image to an 8-bit output of a given size. Bicubic interpolation
is always one, the floor any learned method has to clear. Outputs are rounded to 8 bits
before scoring, as the papers score saved PNG files. Metrics that cannot run here keep
their column, marked not available with the reason; one that fails on an image (NIQE on an
image smaller than its 96-pixel block, say) is reported failed for that method with the
reason, rather than averaged over a subset of the images.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from megasr.errors import InvalidParameterError, MegaSRError
from megasr.imaging.image import DecodedImage
from megasr.imaging.sizing import OutputSize
from megasr.model.engines.base import Engine
from megasr.model.evaluation.dataset import EvalImage
from megasr.model.evaluation.degradations import to_uint8
from megasr.model.evaluation.matlab_bicubic import imresize
from megasr.model.quality import METRICS, Metric, get_metric
from megasr.model.upscaler import Upscaler

BICUBIC = "bicubic"

Method = Callable[[np.ndarray, tuple[int, int]], np.ndarray]
"""LR uint8 (h, w, 3) and the output (height, width) -> output uint8 (height, width, 3)."""
SaveOutput = Callable[[str, str, np.ndarray], None]
"""Called with the method, the image name and the output, for whoever keeps the images."""


@dataclass(frozen=True)
class MetricColumn:
    """One metric of the table, and why it is empty when it cannot run here."""

    metric: Metric
    unavailable: str = ""


@dataclass
class MethodScores:
    """One row: every image's score per metric, and per metric the reason it failed."""

    method: str
    scores: dict[str, dict[str, float]] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)

    def mean(self, metric: str) -> float | None:
        values = self.scores.get(metric)
        return math.fsum(values.values()) / len(values) if values else None


def bicubic(lr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """MATLAB ``imresize(lr, scale, 'bicubic')``: the papers' bicubic row."""
    return to_uint8(imresize(lr, *size) / 255.0)


def engine_method(engine: Engine, batch_size: int = 4) -> Method:
    """An engine through the upscaler, exactly as ``megasr upscale`` runs it."""
    upscaler = Upscaler(engine, batch_size=batch_size, fit_tiles=True)

    def upscale(lr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        image = DecodedImage(rgb=lr.astype(np.float32) / 255.0, alpha=None, source_format="png")
        result = upscaler.upscale(image, OutputSize(width=size[1], height=size[0]))
        return to_uint8(result.rgb)

    return upscale


def metric_columns(names: list[str] | None, with_reference: bool) -> list[MetricColumn]:
    """The asked metrics, or by default every per-image metric that can run here.

    Full-reference metrics need HR images; asking for one without them is an error, and
    the default leaves them out.
    """
    if names is None:
        candidates = [m for m in METRICS.values() if m.kind != "distribution" and m.available()]
        metrics = [m for m in candidates if with_reference or m.kind == "no-reference"]
    else:
        metrics = list(dict.fromkeys(get_metric(name) for name in names))
    columns = []
    for metric in metrics:
        if metric.kind == "full-reference" and not with_reference:
            raise InvalidParameterError(f"{metric.name} compares with HR images: give --hr")
        available = metric.available()
        if available and metric.kind == "distribution":
            raise InvalidParameterError(
                f"{metric.name} compares sets of images; eval scores each image"
            )
        columns.append(MetricColumn(metric, "" if available else available.reason))
    return columns


def evaluate_method(
    name: str,
    method: Method,
    images: list[EvalImage],
    columns: list[MetricColumn],
    scale: int,
    save: SaveOutput | None = None,
) -> MethodScores:
    """Run ``method`` on every image and score each output; ``scale`` is also the border crop."""
    row = MethodScores(name)
    runnable = [c.metric for c in columns if not c.unavailable]
    for image in images:
        output = method(image.lr, image.output_size(scale))
        if save is not None:
            save(name, image.name, output)
        for metric in runnable:
            if metric.name in row.failures:
                continue
            try:
                value = metric.score(output, image.hr, crop=scale)
            except MegaSRError as error:
                row.failures[metric.name] = f"{image.name}: {error.detail}"
                row.scores.pop(metric.name, None)
                continue
            row.scores.setdefault(metric.name, {})[image.name] = value
    return row


@dataclass(frozen=True)
class Evaluation:
    """Everything a table shows: the set, how its LR images came about, the rows."""

    dataset: str
    setting: str
    scale: int
    images: list[str]
    columns: list[MetricColumn]
    rows: list[MethodScores]
