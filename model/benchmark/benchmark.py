"""``megasr bench``: every runner on the same tiles in one run, then batch scaling.

The input is one square tile of a photograph (or of a seeded test pattern), repeated to
fill a batch: convolution networks take the same time whatever the pixels, but the fast
path's agreement with float32 is measured on real content. For each runner: seconds and
peak memory of one tile, then tiles per second at each batch size; for each network, how
closely every row's output agrees with its float32 output (PSNR on RGB, peak 1).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from megasr.errors import InvalidParameterError
from megasr.model.benchmark.machine import describe_machine, load_average
from megasr.model.benchmark.runners import (
    PeerUnavailable,
    Runner,
    engine_runners,
    ncnn_runner,
    torch_reference_runner,
)
from megasr.model.benchmark.timing import Measurement, measure
from megasr.model.quality.psnr import psnr
from megasr.settings import Settings


@dataclass(frozen=True)
class BenchConfig:
    """What to measure: engines x dtypes on one device, tile side, batch sizes, peers."""

    engines: list[str]
    dtypes: list[str]
    size: int
    batches: list[int]
    repeats: int
    peers: bool
    device: torch.device
    settings: Settings


@dataclass
class BenchRow:
    """One runner's numbers (the runner itself is not kept: it holds the weights)."""

    name: str
    precision: str
    network: str
    output_side: int
    device: str
    peer: bool
    single: Measurement
    batches: dict[int, Measurement]
    psnr_vs_float32: float | None = None

    def megapixels_per_second(self, measurement: Measurement | None = None) -> float:
        """Output megapixels per second of one tile (or of ``measurement``'s batch)."""
        measurement = measurement or self.single
        return measurement.tiles_per_second * self.output_side**2 / 1e6


@dataclass
class BenchReport:
    """The rows of one run, the machine they ran on and its load before and after."""

    machine: dict[str, str]
    size: int
    repeats: int
    input_name: str
    load_before: str
    rows: list[BenchRow] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    load_after: str = ""

    def reference(self, network: str) -> BenchRow | None:
        """The float32 row outputs and speeds of ``network`` are compared with."""
        float32 = [r for r in self.rows if r.network == network and r.precision == "float32"]
        return min(float32, key=lambda r: r.peer, default=None)  # an engine row before a peer


def run_benchmark(
    config: BenchConfig,
    image: np.ndarray,
    input_name: str,
    progress: Callable[[str], None] = lambda _: None,
) -> BenchReport:
    """Measure every runner of ``config`` on a ``config.size`` tile cut from ``image``."""
    tile = input_tile(image, config.size)
    report = BenchReport(
        describe_machine(config.device), config.size, config.repeats, input_name, load_average()
    )
    outputs: dict[int, torch.Tensor] = {}  # by id() of the row
    for runner in _runners(config, report.skipped, progress):
        progress(f"{runner.name}, {runner.precision}")
        row, output = _bench(runner, tile, config)
        report.rows.append(row)
        outputs[id(row)] = output
    _score_agreement(report, outputs)
    report.load_after = load_average()
    return report


def input_tile(image: np.ndarray, size: int) -> torch.Tensor:
    """The central ``size`` square of an 8-bit RGB image as a (1, 3, size, size) float tile."""
    height, width = image.shape[:2]
    if min(height, width) < size:
        raise InvalidParameterError(
            f"the input image ({width}x{height}) is smaller than --size {size}"
        )
    top, left = (height - size) // 2, (width - size) // 2
    crop = np.ascontiguousarray(image[top : top + size, left : left + size, :3])
    return torch.from_numpy(crop).permute(2, 0, 1)[None].float() / 255.0


def pattern_image(size: int, seed: int = 0) -> np.ndarray:
    """A seeded stand-in photograph: smooth shading, edges at every angle, fine noise."""
    rng = np.random.default_rng(seed)
    y, x = (axis.astype(np.float32) / size for axis in np.ogrid[0:size, 0:size])
    rings = 0.5 + 0.5 * np.sin(40 * np.pi * ((x - 0.5) ** 2 + (y - 0.5) ** 2))
    shading = np.stack(np.broadcast_arrays(x, y, 1 - x * y), axis=-1)
    noise = rng.normal(0, 0.03, (size, size, 3)).astype(np.float32)
    pixels = 0.6 * shading + 0.3 * rings[..., None] + noise
    return np.round(np.clip(pixels, 0, 1) * 255).astype(np.uint8)


def _runners(
    config: BenchConfig, skipped: list[str], on_skip: Callable[[str], None]
) -> Iterator[Runner]:
    for name in config.engines:
        yield from engine_runners(name, config.settings, config.device, config.dtypes)
    if not config.peers:
        return
    yield torch_reference_runner(config.settings, config.device)
    try:
        yield ncnn_runner()
    except PeerUnavailable as reason:
        skipped.append(str(reason))
        on_skip(str(reason))


def _bench(
    runner: Runner, tile: torch.Tensor, config: BenchConfig
) -> tuple[BenchRow, torch.Tensor]:
    single, output = measure(runner, tile, config.repeats)
    batches = {}
    if runner.batched:
        for batch in config.batches:
            tiles = tile.expand(batch, -1, -1, -1).contiguous()
            batches[batch] = single if batch == 1 else measure(runner, tiles, config.repeats)[0]
    row = BenchRow(
        runner.name,
        runner.precision,
        runner.network,
        runner.scale * tile.shape[-1],
        runner.device.type,
        runner.peer,
        single,
        batches,
    )
    return row, output[0]


def _score_agreement(report: BenchReport, outputs: dict[int, torch.Tensor]) -> None:
    """PSNR of every row's output against its network's float32 reference row."""
    for row in report.rows:
        reference = report.reference(row.network)
        if reference is None or reference is row:
            continue
        output, expected = (outputs[id(r)].permute(1, 2, 0).numpy() for r in (row, reference))
        row.psnr_vs_float32 = psnr(output, expected, y_channel=False)
