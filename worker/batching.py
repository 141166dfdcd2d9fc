"""The batching worker: tiles of many jobs in each engine call, every job finished on its own.

RQ's loop (:mod:`.rq_adapter`, the only code that knows RQ's hooks and private names) blocks
for a job and hands it to :meth:`BatchingWorker.run`, which takes more (:mod:`.intake`),
groups them by :class:`~megasr.worker.upscale_job.BatchKey` (engine and numerics, and for a
tile engine the tile shape) and runs each group:

- a tile engine's jobs are cut into fixed-shape tiles that run together, at most
  ``max_batch_tiles`` per engine call; each image is blended back by its own accumulator and
  finished the moment its last tile is in;
- an image engine's jobs (MegaSR) go to the engine as whole images in one call, which
  batches their latent tiles, at most ``max_batch_tiles`` per forward pass, at every
  denoising step, each image with its own size, prompt, seed and sampling options.

Between engine calls, and between an image engine's steps, :mod:`.interrupts` ends the jobs
that must not go on (canceled, stopped, timed out, no longer ours). Every job is ended on
its own (:mod:`.job_endings`): through RQ's success or failure handling, only after the
worker claimed its lease, with its webhook in the same transaction as its end.

What goes wrong stays with the job it belongs to: a job that cannot be decoded fails before
any engine call; an engine error in a call shared by several jobs re-runs each job's part
alone, so only the job that still fails does.

When the device itself fails, the worker gives up the whole batch and stops: an engine call
that makes no progress for ``watchdog_timeout_s`` (:mod:`.watchdog`; the process then exits,
since the hung call cannot be interrupted), or a sticky CUDA error (:mod:`.device_faults`).
A job that was alone in the failed call fails (RQ retries it while it has retries); every
other job in hand goes back to the front of its queue without spending a retry and runs
alone from then on. ``/healthz`` answers 503 from that moment.

SIGTERM lets the batch in hand finish, then the worker exits (RQ's warm shutdown); no new job
is taken once it arrives, and ``/readyz`` answers 503 from then on (:mod:`.health`).
"""

from __future__ import annotations

import logging
import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from contextlib import suppress
from typing import TypeVar

import torch
from redis import Redis
from redis.client import Pipeline
from rq.job import Job
from rq.queue import Queue

from megasr.engine_status import publish_engines, withdraw_engines
from megasr.errors import EngineError, MegaSRError
from megasr.model.engines.base import Cancelled
from megasr.queue import AUTO_QUEUE, get_queue
from megasr.recovery import on_abandoned
from megasr.worker.batch_items import BatchItem, Segment, next_segments
from megasr.worker.device_faults import is_fatal_device_error
from megasr.worker.health import EXIT_UNHEALTHY, WorkerHealth, linger, running_once_started
from megasr.worker.heartbeat import HeartbeatThread
from megasr.worker.intake import Intake, is_upscale
from megasr.worker.interrupts import Interrupts
from megasr.worker.job_endings import JobEndings
from megasr.worker.lease import Leases
from megasr.worker.rq_adapter import RQWorker
from megasr.worker.runtime import WorkerRuntime
from megasr.worker.stop_points import StopPoints
from megasr.worker.upscale_job import BatchKey
from megasr.worker.watchdog import Watchdog

logger = logging.getLogger("megasr.worker.batching")

T = TypeVar("T")


class DeviceLost(Exception):
    """The device failed under an engine call of ``items``: the batch is given up."""

    def __init__(self, reason: str, items: list[BatchItem]) -> None:
        super().__init__(reason)
        self.items = items


class BatchingWorker:
    """Runs the tiles of many upscale jobs per engine call; RQ's loop drives it."""

    def __init__(self, runtime: WorkerRuntime, connection: Redis, name: str | None = None) -> None:
        settings = runtime.settings
        self.runtime = runtime
        self.rq = RQWorker(
            connection,
            self,
            name=name,
            worker_ttl_s=settings.worker_ttl_s,
            maintenance_interval_s=settings.worker_maintenance_interval_s,
            lease_s=settings.heartbeat_ttl_s,
            # Called by the registry cleanup for jobs a dead worker left behind.
            exception_handlers=[on_abandoned, runtime.notifier.on_abandoned],
            is_batched=is_upscale,
        )
        self.name = self.rq.name
        self.leases = Leases(
            connection, self.name, settings.heartbeat_ttl_s, settings.heartbeat_interval_s
        )
        self.health = WorkerHealth()
        self.watchdog = Watchdog(settings.watchdog_timeout_s, self._on_stall)
        runtime.runner.on_progress = self.watchdog.progress
        self.stops = StopPoints(settings.test_stop_at)
        self.endings = JobEndings(self.rq, self.leases, runtime, self.stops)
        self.interrupts = Interrupts(self.leases, self.endings, self.rq.executions.values)
        self.intake = Intake(self.rq, self.leases, runtime, self.endings)
        self._heartbeats = HeartbeatThread(
            self.rq, self.leases, settings.heartbeat_interval_s, lambda: not self.watchdog.stalled
        )
        self.health.checks += [
            ("the heartbeat thread", running_once_started(self._heartbeats)),
            ("the watchdog", running_once_started(self.watchdog)),
        ]
        self._batch: list[BatchItem] = []  # every job in hand
        self._in_call: list[BatchItem] = []  # the jobs of the engine call running now

    def listen(self, engines: Iterable[str]) -> None:
        """Take jobs from the queues of ``engines``, and from the queue of jobs for any
        worker's default engine (before :meth:`work`)."""
        settings, connection = self.runtime.settings, self.rq.connection
        names = [*engines, AUTO_QUEUE]
        self.rq.listen(get_queue(settings, e, connection, self.rq.queue_class) for e in names)

    def work(self, burst: bool = False, logging_level: str = "INFO") -> bool:
        """RQ's loop, until a warm shutdown, a device failure or (``burst``) an empty queue."""
        return self.rq.work(burst=burst, logging_level=logging_level)

    def announce_engines(self) -> None:
        """Tell the gateway which engines this worker serves (and how loading went)."""
        self.announce(self.rq.connection)

    # -- what RQ's loop tells us (rq_adapter.WorkerEvents) ----------------------------------

    def started(self) -> None:
        self._heartbeats.start()
        self.watchdog.start()

    def draining(self) -> None:
        self.health.drain()

    def stopped(self) -> None:
        self.health.exit()  # before its threads stop, so no probe reads them as dead
        self.watchdog.stop()
        self._heartbeats.stop()
        with suppress(Exception):
            withdraw_engines(self.rq.connection, self.name)

    def stop_job(self, job_id: str) -> None:
        self.interrupts.request_stop(job_id)

    def ending(self, job: Job, pipeline: Pipeline) -> None:
        self.endings.queue_webhook(job, pipeline)

    def announce(self, client: Redis | Pipeline) -> None:
        engines = self.runtime.engines
        publish_engines(
            client,
            self.name,
            engines.states,
            ttl_s=self.rq.worker_ttl + 60,
            default=engines.default,
            details=engines.details,
        )

    def run(self, job: Job, queue: Queue) -> None:
        """One batch: ``job`` and whatever else fits, every one of them ended or handed back."""
        self.runtime.metrics.busy.set(1)
        try:
            self.intake.take(job, queue, self._batch)
            self._run_batch()
        except DeviceLost as lost:
            self.health.fail(str(lost))
            self._give_up(EngineError(str(lost)), lost.items)
            self.rq.stop_after_batch()  # `megasr worker` then exits unhealthy
        except Exception as exc:  # Redis or storage gone past their retries, a callback raised
            logger.exception("the batch failed outside the engine; handing its jobs back")
            alone = self._batch if len(self._batch) == 1 else []  # a crash's rule: _give_up
            self._give_up(EngineError(f"the worker failed: {type(exc).__name__}"), alone)
        finally:
            self._batch = []
            self.runtime.metrics.busy.set(0)

    # -- running a batch ----------------------------------------------------------------------

    def _run_batch(self) -> None:
        groups = self._group(self._batch)
        logger.info(
            "batch of %d job(s) in %d group(s): %s",
            len(self._batch),
            len(groups),
            ", ".join(f"{key.engine} x{len(group)}" for key, group in groups.items()),
        )
        for group in groups.values():
            if group[0].work.whole_image:
                self._run_images(group)
            else:
                self._run_tiles(group)

    def _group(self, items: list[BatchItem]) -> dict[BatchKey, list[BatchItem]]:
        """Decode and prepare each job, grouped by what can share an engine call; a job that
        cannot be prepared fails here, before any engine call."""
        groups: dict[BatchKey, list[BatchItem]] = defaultdict(list)
        for item in items:
            try:
                save_meta = self._meta_writer(item)
                item.work = self.runtime.new_job(item.job.args[0], item.job, save_meta)
                item.work.prepare()
            except Exception as exc:
                self.endings.failed(item, exc)
                continue
            groups[item.work.batch_key].append(item)
        return groups

    def _meta_writer(self, item: BatchItem) -> Callable[[Job], object]:
        return lambda job: self.leases.save_meta(job, item.execution)

    def _run_tiles(self, group: list[BatchItem]) -> None:
        """All tiles of jobs that share a batch key, ``max_batch_tiles`` per engine call."""
        batch_size = self.runtime.settings.max_batch_tiles
        while True:
            self.interrupts.checkpoint(group)
            pending = [item for item in group if not item.done]
            if not pending:
                return
            segments = next_segments(pending, batch_size)
            batch_size = self._run_segments(segments, batch_size)

    def _run_segments(self, segments: list[Segment], batch_size: int) -> int:
        """One engine call for ``segments``; returns the call size that fit in memory."""
        tiles = [segment.tiles for segment in segments]
        items = [segment.item for segment in segments]
        started = time.perf_counter()
        try:
            outputs, batch_size = self._engine_call(
                items, self.runtime.runner.run, items[0].work.slot, torch.cat(tiles), batch_size
            )
        except DeviceLost:
            raise
        except Exception as exc:
            self._isolate(segments, batch_size, exc)
            return batch_size
        self._deliver(segments, outputs, started)
        return batch_size

    def _isolate(self, segments: list[Segment], batch_size: int, error: Exception) -> None:
        """A call shared by several jobs failed: run each job's tiles alone to find whose."""
        if len(segments) == 1:
            self.endings.failed(segments[0].item, error)
            return
        logger.warning("engine call of %d jobs failed (%s); retrying each", len(segments), error)
        for segment in segments:
            started = time.perf_counter()
            slot = segment.item.work.slot
            try:
                outputs, _ = self._engine_call(
                    [segment.item], self.runtime.runner.run, slot, segment.tiles, batch_size
                )
            except DeviceLost:
                raise
            except Exception as exc:
                self.endings.failed(segment.item, exc)
                continue
            self._deliver([segment], outputs, started)

    def _deliver(self, segments: list[Segment], outputs: torch.Tensor, started: float) -> None:
        """Hand each job its tiles' outputs; finish the jobs that are complete."""
        offset = 0
        for item, first, count in segments:
            part, offset = outputs[offset : offset + count], offset + count
            if item.done:
                continue
            try:
                item.work.add(first, part, started)
            except Exception as exc:
                self.endings.failed(item, exc)
                continue
            item.next_tile += count
            if item.work.complete:
                self._finish(item)

    def _run_images(self, group: list[BatchItem]) -> None:
        """Jobs of an image engine: their whole images in one engine call."""
        self.interrupts.checkpoint(group)
        pending = [item for item in group if not item.done]
        if not pending:
            return
        slot = pending[0].work.slot
        tasks = [item.work.image_task(self.interrupts.should_stop(item)) for item in pending]
        started = time.perf_counter()
        try:
            results = self._engine_call(pending, self.runtime.runner.restore, slot, tasks)
        except DeviceLost:
            raise
        except Exception as exc:
            if len(pending) == 1:
                self.endings.failed(pending[0], exc)
                return
            logger.warning("engine call of %d jobs failed (%s); retrying each", len(pending), exc)
            for item in pending:
                self._run_images([item])
            return
        for item, result in zip(pending, results, strict=True):
            if item.done or isinstance(result, Cancelled):
                continue  # ended between steps by its should_stop
            item.work.restored(result, started)
            self._finish(item)

    def _engine_call(self, items: list[BatchItem], call: Callable[..., T], *args) -> T:
        """One engine call for ``items``, under the watchdog; a sticky device error raises
        :class:`DeviceLost`."""
        self._in_call = items
        try:
            with self.watchdog.watching():
                result = call(*args)
        except Exception as exc:
            if is_fatal_device_error(exc):
                raise DeviceLost(f"the device failed: {exc}", items) from exc
            raise
        finally:
            self._in_call = []
        self.stops.reached("engine-returned")
        return result

    def _finish(self, item: BatchItem) -> None:
        """Store a complete job's result, then end it as succeeded if it may still end so.

        The output object is stored before the job is marked finished, so a finished job
        always has its result; a job canceled while its result was stored ends canceled and
        its object is removed; a worker that lost the job leaves the object where it is (the
        key is the job's, and its new owner writes the same key)."""
        if self.interrupts.interrupt(item):
            return
        try:
            output = item.work.finish()
        except Exception as exc:
            self.endings.failed(item, exc)
            return
        self.stops.reached("result-stored")
        if self.leases.state(item.job, item.execution).canceled:
            with suppress(MegaSRError):  # storage away: the retention sweep removes it later
                self.runtime.storage.delete(output["key"])
            self.endings.canceled(item)
            return
        self.endings.succeeded(item, output)

    # -- when the device fails ----------------------------------------------------------------

    def _give_up(self, error: MegaSRError, culprits: list[BatchItem]) -> None:
        """End every job in hand: the one job of the failed call fails (RQ retries it while
        it has retries); the others, innocent or not to be told apart, go back free."""
        blamed = [item for item in culprits if not item.done]
        for item in list(self._batch):
            if item.done:
                continue
            try:
                if len(blamed) == 1 and item is blamed[0]:
                    self.endings.failed(item, error)
                else:
                    self.endings.handed_back(item)
            except Exception:
                logger.exception("cannot hand back job %s; its lease will lapse", item.job.id)

    def _on_stall(self, idle_s: float) -> None:
        """From the watchdog's thread, while the engine call still hangs in the main one."""
        timeout = self.runtime.settings.watchdog_timeout_s
        problem = f"an engine call made no progress for {idle_s:.0f} s (timeout {timeout:g} s)"
        self.health.fail(problem)
        self._give_up(EngineError(f"{problem}; the worker restarts"), self._in_call)
        with suppress(Exception):
            withdraw_engines(self.rq.connection, self.name)
            self.rq.register_death()
        self.runtime.close()  # deliver the webhooks of the jobs just ended
        linger(self.health, self.runtime.settings.worker_exit_linger_s, interruptible=False)
        logger.error("exiting (%d): the engine call cannot be interrupted", EXIT_UNHEALTHY)
        logging.shutdown()
        os._exit(EXIT_UNHEALTHY)
