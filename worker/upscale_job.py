"""One job's image through the stages: decode, preprocess, inference, encode, upload.

The engine work in the middle is not done here: :meth:`UpscaleJob.prepare` cuts the image
into the engine's fixed-shape tiles and whoever runs the engine (one job alone in
:mod:`.tasks`, many jobs at once in :mod:`.batching`) hands the upscaled tiles back through
:meth:`UpscaleJob.add`; :meth:`UpscaleJob.finish` blends them, resizes to the asked size,
encodes and stores the result. A job's tile shape depends on its image alone (the engine's
tile, or for a smaller image its size rounded up to :data:`TILE_BUCKET`), so its tiles and
so its result are the same whether it ran alone or batched.

Progress, the stage and per-stage timings go into ``job.meta`` as the gateway reads them; the
worker is the only writer of a started job's meta.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import torch
from rq.job import Job
from rq.timeouts import JobTimeoutException

from megasr.errors import MegaSRError
from megasr.imaging.decode import decode_image
from megasr.imaging.encode import default_output_format, encode_image
from megasr.imaging.image import DecodedImage, ImageLimits
from megasr.jobs import (
    META_ERROR,
    META_OUTPUT,
    META_PROGRESS,
    META_STAGE,
    META_TIMINGS,
    JobPayload,
    UpscaleParams,
)
from megasr.model.engines.base import GenerationOptions
from megasr.model.tiler import TileAccumulator
from megasr.model.upscaler import cut_tiles, finish_image, plan_image_tiles
from megasr.problems import problem, problem_from_error
from megasr.settings import Settings
from megasr.storage import Storage, content_type_for, output_key
from megasr.worker.engines import EnginePool, EngineSlot
from megasr.worker.metrics import WorkerMetrics

# Images smaller than an engine tile get a tile of their size rounded up to this, so a small
# image does not pay for a whole tile and images of similar size still share a batch shape.
TILE_BUCKET = 64

# Where each stage ends on the 0..1 progress bar; inference fills the span before "encode".
_PROGRESS_AFTER = {"decode": 0.05, "preprocess": 0.1, "inference": 0.9, "encode": 0.95}


@dataclass(frozen=True)
class BatchKey:
    """Tiles with equal keys can share an engine call: same network, numerics and shape, and
    for a conditional engine the same sampling loop (steps, guidance scale, colour fix).

    The requested scale is not part of it: every engine runs at its native scale and the
    resize to the asked size happens per image afterwards. Prompts and seeds are not either:
    they travel with each tile. The sampling fields are None for an engine that is not
    conditional, so its tiles batch together whatever diffusion options their jobs carry.
    """

    engine: str
    dtype: str
    tile: tuple[int, int]
    steps: int | None = None
    guidance_scale: float | None = None
    color_fix: str | None = None


def generation_options(params: UpscaleParams) -> GenerationOptions:
    """A request's diffusion fields as a conditional engine takes them."""
    return GenerationOptions.of(params)


def count_tiles(payload: JobPayload, engines: EnginePool) -> int:
    """How many tiles a queued job will take, from the size the gateway probed (no decode)."""
    try:
        spec = engines.get(payload["params"].get("engine", "auto")).tile_spec
        width, height = int(payload["input"]["width"]), int(payload["input"]["height"])
        return len(plan_image_tiles(height, width, spec, fit=True, bucket=TILE_BUCKET))
    except (MegaSRError, KeyError, TypeError, ValueError, AttributeError):
        return 1  # the job fails on its own later; for the batch it is one tile


def failure_problem(error: BaseException) -> dict[str, Any]:
    """The problem object stored for a failed job; internal errors name only their type."""
    if isinstance(error, MegaSRError):
        return problem_from_error(error)
    if isinstance(error, JobTimeoutException):
        return problem(500, "Job timed out", str(error), "job-timeout")
    return problem(500, "Internal error", f"the worker failed: {type(error).__name__}")


def store_failure(job: Job | None, error: BaseException, retrying: bool) -> None:
    """Put the problem object of ``error`` in the job's meta for the gateway to show."""
    if job is None:
        return
    job.meta.update(
        {META_ERROR: failure_problem(error), META_STAGE: "retrying" if retrying else "failed"}
    )
    job.save_meta()


class UpscaleJob:
    """The image work of one job, fed engine outputs tile by tile."""

    def __init__(
        self,
        payload: JobPayload,
        settings: Settings,
        storage: Storage,
        engines: EnginePool,
        metrics: WorkerMetrics,
        job: Job | None = None,
    ) -> None:
        self.payload = payload
        self.job_id = payload["job_id"]
        self.job = job
        self.settings = settings
        self.storage = storage
        self.metrics = metrics
        self.timings: dict[str, float] = {}
        self.params = UpscaleParams.model_validate(payload["params"])
        self.slot: EngineSlot = engines.get(self.params.engine)
        self.options = generation_options(self.params) if self.slot.engine.conditional else None
        self.tiles = torch.empty(0)
        self._image: DecodedImage | None = None
        self._size = (0, 0)
        self._accumulator: TileAccumulator | None = None
        self._tiles_done = 0
        self._inference_started: float | None = None
        self._tile = self.slot.tile_spec.size

    @property
    def batch_key(self) -> BatchKey:
        key = BatchKey(self.slot.name, self.slot.dtype_name, (self._tile, self._tile))
        if self.options is None:
            return key
        return replace(
            key,
            steps=self.options.steps,
            guidance_scale=self.options.guidance_scale,
            color_fix=self.options.color_fix,
        )

    def tile_options(self, count: int) -> list[GenerationOptions] | None:
        """The engine options of ``count`` of this job's tiles (None: the engine takes none)."""
        return None if self.options is None else [self.options] * count

    @property
    def complete(self) -> bool:
        return self._accumulator is not None and self._accumulator.complete

    def prepare(self) -> None:
        """Fetch and decode the input, resolve the output size, cut the tiles."""
        if self.job is not None and self.job.meta.get(META_ERROR):
            self._save_meta({META_ERROR: None})  # a retry starts clean
        with self._stage("decode"):
            data = self.storage.get(self.payload["input_key"])
            limits = ImageLimits(self.settings.max_upload_bytes, self.settings.max_input_pixels)
            image = decode_image(data, limits)
        self.metrics.input_megapixels.inc(image.width * image.height / 1e6)
        with self._stage("preprocess"):
            self._size = self.params.output_size().resolve(
                image.width, image.height, self.settings.max_output_pixels
            )
            self.tiles, layout = cut_tiles(image, self.slot.tile_spec, fit=True, bucket=TILE_BUCKET)
            self._tile = layout.tile
            self._accumulator = TileAccumulator(layout, self.slot.engine.native_scale)
            self._image = image
        self._save_meta({META_STAGE: "inference"})  # from here it waits for engine calls

    def add(self, first: int, outputs: torch.Tensor, started: float) -> None:
        """Blend engine outputs of tiles ``first``.. in; ``started`` is when their call began."""
        assert self._accumulator is not None, "prepare() first"
        if self._inference_started is None:
            self._inference_started = started
        self._accumulator.add(first, outputs)
        self._tiles_done += len(outputs)
        low, high = _PROGRESS_AFTER["preprocess"], _PROGRESS_AFTER["inference"]
        progress = low + (high - low) * self._tiles_done / len(self.tiles)
        if self.complete:
            self._record("inference", time.perf_counter() - self._inference_started)
        self._save_meta({META_PROGRESS: round(progress, 4), META_TIMINGS: dict(self.timings)})

    def finish(self) -> dict[str, Any]:
        """Blend, resize, encode and store the result; returns the ``output`` record."""
        assert self._image is not None and self._accumulator is not None, "prepare() first"
        image, (width, height) = self._image, self._size
        fmt = self.params.output_format or default_output_format(image.source_format)
        with self._stage("encode"):
            result = finish_image(self._accumulator.result(), image, width, height)
            data = encode_image(
                result.rgb, result.alpha, fmt, self.params.quality, image.bit_depth, image.grayscale
            )
        key = output_key(self.job_id, fmt)
        with self._stage("upload"):
            self.storage.put(key, data, content_type_for(fmt))
        self.metrics.output_megapixels.inc(width * height / 1e6)
        output = {"width": width, "height": height, "format": fmt, "bytes": len(data), "key": key}
        self._save_meta({META_OUTPUT: output, META_PROGRESS: 1.0, META_STAGE: "done"})
        return output

    @contextmanager
    def _stage(self, stage: str) -> Iterator[None]:
        self._save_meta({META_STAGE: stage})
        start = time.perf_counter()
        yield
        self._record(stage, time.perf_counter() - start)
        done = {META_TIMINGS: dict(self.timings)}
        if stage in _PROGRESS_AFTER:
            done[META_PROGRESS] = _PROGRESS_AFTER[stage]
        self._save_meta(done)

    def _record(self, stage: str, seconds: float) -> None:
        self.timings[stage] = round(seconds, 6)
        self.metrics.stage_seconds.labels(stage).observe(seconds)

    def _save_meta(self, values: dict[str, Any]) -> None:
        """Update ``job.meta`` (a job run outside RQ has none to update)."""
        if self.job is None:
            return
        self.job.meta.update(values)
        self.job.save_meta()
