"""The RQ task the gateway enqueues: ``megasr.worker.tasks.upscale(payload)``.

Run by a plain ``rq worker``, it upscales its one job alone (a tile engine's tiles batch by
batch, an image engine's whole image in one call) and leaves results, retries and failure
records to RQ. ``megasr worker`` does not call it: the
batching worker recognises the task by name and runs the tiles of many such jobs together,
through the same :class:`~megasr.worker.upscale_job.UpscaleJob` stages, so a job's result is
the same either way.
"""

from __future__ import annotations

import time
from typing import Any

from rq import get_current_job

from megasr.jobs import JobPayload
from megasr.worker.runtime import WorkerRuntime, get_runtime
from megasr.worker.upscale_job import UpscaleJob, store_failure


def upscale(payload: JobPayload) -> dict[str, Any]:
    """Upscale one job's input to its output in storage; returns the ``output`` record."""
    runtime = get_runtime()
    job = get_current_job()
    engine = "unknown"
    try:
        work = runtime.new_job(payload, job)
        engine = work.slot.name
        work.prepare()
        if work.whole_image:
            _restore(runtime, work)
        else:
            _run_tiles(runtime, work)
        output = work.finish()
    except Exception as exc:
        retrying = job is not None and job.should_retry
        store_failure(job, exc, retrying)
        runtime.metrics.jobs_finished.labels(engine, "retried" if retrying else "failed").inc()
        raise
    runtime.metrics.jobs_finished.labels(engine, "succeeded").inc()
    return output


def _run_tiles(runtime: WorkerRuntime, work: UpscaleJob) -> None:
    first, batch_size = 0, runtime.settings.max_batch_tiles
    while first < len(work.tiles):
        started = time.perf_counter()
        tiles = work.tiles[first : first + batch_size]
        outputs, batch_size = runtime.runner.run(work.slot, tiles, batch_size)
        work.add(first, outputs, started)
        first += len(outputs)


def _restore(runtime: WorkerRuntime, work: UpscaleJob) -> None:
    """The whole image through an image engine; RQ's own job timeout and stop command
    interrupt this process, so there is nothing to ask between steps."""
    started = time.perf_counter()
    (result,) = runtime.runner.restore(work.slot, [work.image_task(lambda: False)])
    work.restored(result, started)
