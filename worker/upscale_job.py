"""One job's image through the stages: decode, preprocess, inference, encode, upload.

The engine work in the middle is not done here; whoever runs the engine (one job alone in
:mod:`.tasks`, many jobs at once in :mod:`.batching`) hands the result back:

- a tile engine: :meth:`UpscaleJob.prepare` cuts the image into the engine's fixed-shape
  tiles, the upscaled tiles come back through :meth:`UpscaleJob.add` and are blended. A
  job's tile shape depends on its image alone (the engine's tile, or for a smaller image its
  size rounded up to :data:`TILE_BUCKET`), so its result is the same alone or batched;
- an image engine: :meth:`UpscaleJob.image_task` is the whole image with its output size and
  generation options, and the restored image comes back through :meth:`UpscaleJob.restored`.

:meth:`UpscaleJob.finish` then resizes to the exact asked size, encodes and stores the result.

Progress, the stage and per-stage timings go into ``job.meta`` as the gateway reads them; the
worker that owns a started job is the only writer of its meta.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
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
    META_WORK,
    JobPayload,
    UpscaleParams,
    WorkUnit,
)
from megasr.model.engines.base import GenerationOptions, ImageEngine, ImageTask
from megasr.model.tiler import TileAccumulator
from megasr.model.upscaler import cut_tiles, finish_image, plan_image_tiles
from megasr.problems import problem, problem_from_error
from megasr.settings import Settings
from megasr.storage import Storage, content_type_for, output_key
from megasr.worker.engines import EnginePool, EngineSlot
from megasr.worker.prometheus import WorkerMetrics

# Images smaller than an engine tile get a tile of their size rounded up to this, so a small
# image does not pay for a whole tile and images of similar size still share a batch shape.
TILE_BUCKET = 64

# Where each stage ends on the 0..1 progress bar; inference fills the span before "encode".
_PROGRESS_AFTER = {"decode": 0.05, "preprocess": 0.1, "inference": 0.9, "encode": 0.95}


@dataclass(frozen=True)
class BatchKey:
    """Jobs with equal keys can share engine calls: same network and numerics, and for a tile
    engine the same tile shape (None for an image engine, which batches images of any size,
    prompt, seed and sampling options itself).

    The requested scale is not part of it: a tile engine runs at its native scale and the
    resize to the asked size happens per image afterwards.
    """

    engine: str
    dtype: str
    tile: tuple[int, int] | None


def count_tiles(payload: JobPayload, engines: EnginePool) -> int:
    """How many tiles a queued job will take (per denoising step for an image engine), from
    the size the gateway probed (no decode)."""
    try:
        engine = engines.get(job_engine(payload)).engine
        width, height = int(payload["input"]["width"]), int(payload["input"]["height"])
        if isinstance(engine, ImageEngine):
            params = UpscaleParams.model_validate(payload["params"])
            size = params.output_size().resolve(width, height, engines.settings.max_output_pixels)
            return engine.tiles_per_step(size[1], size[0])
        spec = engine.tile_spec
        return len(plan_image_tiles(height, width, spec, fit=True, bucket=TILE_BUCKET))
    except (MegaSRError, KeyError, TypeError, ValueError, AttributeError):
        return 1  # the job fails on its own later; for the batch it is one tile


def job_engine(payload: JobPayload) -> str:
    """The engine a job runs on: the one the gateway resolved and queued it for (a job queued
    before engines had queues of their own names only its ``engine`` parameter)."""
    return payload.get("engine") or payload["params"].get("engine", "auto")


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
        save_meta: Callable[[Job], object] | None = None,
    ) -> None:
        self.payload = payload
        self.job_id = payload["job_id"]
        self.job = job
        self.settings = settings
        self.storage = storage
        self.metrics = metrics
        self.timings: dict[str, float] = {}
        self.params = UpscaleParams.model_validate(payload["params"])
        self.slot: EngineSlot = engines.get(job_engine(payload))
        self._write_meta = save_meta or Job.save_meta
        self.tiles = torch.empty(0)
        self._image: DecodedImage | None = None
        self._size = (0, 0)
        self._accumulator: TileAccumulator | None = None
        self._restored: torch.Tensor | None = None
        self._tiles_done = 0
        self._inference_started: float | None = None
        self._tile: int | None = None

    @property
    def whole_image(self) -> bool:
        """Whether the engine takes the whole image (an image engine) rather than tiles."""
        return isinstance(self.slot.engine, ImageEngine)

    @property
    def batch_key(self) -> BatchKey:
        tile = None if self._tile is None else (self._tile, self._tile)
        return BatchKey(self.slot.name, self.slot.dtype_name, tile)

    @property
    def complete(self) -> bool:
        if self._restored is not None:
            return True
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
            if not self.whole_image:
                spec = self.slot.tile_spec
                self.tiles, layout = cut_tiles(image, spec, fit=True, bucket=TILE_BUCKET)
                self._tile = layout.tile
                native_scale = self.slot.engine.native_scale
                size = (self._size[1], self._size[0])
                self._accumulator = TileAccumulator(layout, native_scale, size)
            self._image = image
        self._save_meta({META_STAGE: "inference"})  # from here it waits for engine calls

    def image_task(self, should_cancel: Callable[[], bool]) -> ImageTask:
        """The whole image for an image engine, at the asked size, with the request's options;
        progress follows its denoising steps, ``should_cancel`` is asked before each."""
        assert self._image is not None, "prepare() first"
        pixels = torch.from_numpy(np.ascontiguousarray(self._image.rgb.transpose(2, 0, 1)))
        width, height = self._size
        return ImageTask(
            pixels=pixels,
            size=(height, width),
            options=GenerationOptions.of(self.params),
            on_progress=self._steps_done,
            should_cancel=should_cancel,
        )

    def restored(self, image: torch.Tensor, started: float) -> None:
        """An image engine's result (3, H, W); ``started`` is when its call began."""
        self._restored = image
        self._record("inference", time.perf_counter() - started)
        self._save_meta({META_TIMINGS: dict(self.timings)})

    def _steps_done(self, done: int, total: int) -> None:
        self._progress(done, total, "steps")

    def add(self, first: int, outputs: torch.Tensor, started: float) -> None:
        """Blend engine outputs of tiles ``first``.. in; ``started`` is when their call began."""
        assert self._accumulator is not None, "prepare() first"
        if self._inference_started is None:
            self._inference_started = started
        self._accumulator.add(first, outputs)
        self._tiles_done += len(outputs)
        if self.complete:
            self._record("inference", time.perf_counter() - self._inference_started)
        self._progress(self._tiles_done, len(self.tiles), "tiles")

    def _progress(self, done: int, total: int, unit: WorkUnit) -> None:
        """Progress and timings so far, with ``done`` of the ``total`` tiles or steps of the
        engine work: the counts too, so a client can say how far it is and how fast it goes."""
        low, high = _PROGRESS_AFTER["preprocess"], _PROGRESS_AFTER["inference"]
        progress = low + (high - low) * done / total
        work = {"done": done, "total": total, "unit": unit}
        self._save_meta(
            {META_PROGRESS: round(progress, 4), META_WORK: work, META_TIMINGS: dict(self.timings)}
        )

    def finish(self) -> dict[str, Any]:
        """Blend, resize, encode and store the result; returns the ``output`` record."""
        assert self._image is not None and self.complete, "prepare() and the engine first"
        image, (width, height) = self._image, self._size
        fmt = self.params.output_format or default_output_format(image.source_format)
        rgb = self._restored if self._restored is not None else self._accumulator.result()
        with self._stage("encode"):
            result = finish_image(rgb, image, width, height)
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
        """Update ``job.meta`` (a job run outside RQ has none to update); the batching worker
        writes it only while the job is still its own."""
        if self.job is None:
            return
        self.job.meta.update(values)
        self._write_meta(self.job)
