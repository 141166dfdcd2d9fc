"""The batching worker: tiles of many jobs in each engine call, every job finished on its own.

:class:`BatchingWorker` is an RQ ``SimpleWorker`` (engines stay loaded in the one process; no
fork per job). RQ's loop blocks for the first job; :meth:`BatchingWorker.execute_job` then
takes more upscale jobs without blocking longer than ``max_wait_ms``, until ``max_batch_tiles``
tiles are in hand, and marks each started through RQ's own calls, so the started registry,
``rq info`` and dashboards show the truth. Jobs are grouped by
:class:`~megasr.worker.upscale_job.BatchKey` (engine and numerics, and for a tile engine the
tile shape):

- a tile engine's jobs are cut into fixed-shape tiles that run together, at most
  ``max_batch_tiles`` per engine call; each image is blended back by its own accumulator and
  finished the moment its last tile is in;
- an image engine's jobs (MegaSR) go to the engine as whole images in one call, which
  batches their latent tiles, at most ``max_batch_tiles`` per forward pass, at every
  denoising step, each image with its own size, prompt, seed and sampling options; between
  steps it asks each job whether to go on, so cancels, stops and timeouts take effect within
  one step.

Every job is finished on its own, through RQ's success or failure handling (results,
retries, callbacks and RQ's failed registry stay RQ's).

What can go wrong stays with the job it belongs to: a job that cannot be decoded fails before
any engine call; an engine error in a call shared by several jobs re-runs each job's tiles on
their own, so only the job that still fails does. A job whose input is bad (a 4xx problem) is
not retried, since every retry would fail the same way.

Between engine calls the worker looks at each job: canceled by the gateway (its cancel key,
see :mod:`megasr.cancellation`, or RQ's canceled status) drops it and marks it canceled; an
RQ stop-job command (which RQ delivers only for a worker's first job, so this worker handles
it for each) stops it; past its timeout fails it; re-queued by RQ behind the worker's back
(heartbeats stalled) drops it without a result, since another worker owns it now.

SIGTERM lets the batch in hand finish, then the worker exits (RQ's warm shutdown); no new job
is taken once it arrives.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import NamedTuple

import torch
from redis import Redis
from redis.client import Pipeline
from rq.callbacks import execute_stopped_callback
from rq.command import handle_command, parse_payload
from rq.exceptions import DequeueTimeout, DeserializationError, InvalidJobOperation
from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.queue import Queue
from rq.timeouts import JobTimeoutException
from rq.utils import now
from rq.worker import SimpleWorker, WorkerStatus

from megasr.cancellation import cancel_key
from megasr.engine_status import publish_engines, withdraw_engines
from megasr.errors import MegaSRError
from megasr.jobs import META_STAGE, TASK_FUNC
from megasr.jobs import JobStatus as PublicStatus
from megasr.model.engines.base import Cancelled
from megasr.queue import JOB_SERIALIZER, get_queue
from megasr.worker.heartbeat import HeartbeatThread
from megasr.worker.runtime import WorkerRuntime
from megasr.worker.upscale_job import BatchKey, UpscaleJob, count_tiles, store_failure

logger = logging.getLogger("megasr.worker.batching")

# Redis rounds a blocking timeout below a millisecond to 0, which means "wait forever".
_MIN_BLOCK_S = 0.001


@dataclass(eq=False)
class BatchItem:
    """One job in the batch in hand."""

    job: Job
    queue: Queue
    execution: Execution
    work: UpscaleJob | None = None
    next_tile: int = 0
    done: bool = False

    @property
    def engine(self) -> str:
        """The engine label for metrics ("unknown" before the engine was resolved)."""
        return self.work.slot.name if self.work is not None else "unknown"

    @property
    def tiles_left(self) -> int:
        assert self.work is not None
        return len(self.work.tiles) - self.next_tile


class Segment(NamedTuple):
    """``count`` tiles of one job, from its tile ``first``, in an engine call."""

    item: BatchItem
    first: int
    count: int

    @property
    def tiles(self) -> torch.Tensor:
        return self.item.work.tiles[self.first : self.first + self.count]


class BatchingWorker(SimpleWorker):
    """An RQ worker that runs the tiles of many upscale jobs per engine call."""

    def __init__(self, runtime: WorkerRuntime, connection: Redis, name: str | None = None) -> None:
        settings = runtime.settings
        super().__init__(
            [get_queue(settings, connection)],
            name=name,
            connection=connection,
            serializer=JOB_SERIALIZER,
            worker_ttl=settings.worker_ttl_s,
            maintenance_interval=settings.worker_maintenance_interval_s,
            # Called by RQ's registry cleanup for jobs a dead worker left behind.
            exception_handlers=[runtime.notifier.on_abandoned],
        )
        self.runtime = runtime
        self._stop_job_ids: set[str] = set()
        self._stop_lock = threading.Lock()
        self._heartbeats = HeartbeatThread(
            self, settings.heartbeat_interval_s, settings.heartbeat_ttl_s
        )

    # -- RQ hooks ---------------------------------------------------------------------------

    def bootstrap(self, *args, **kwargs) -> None:
        super().bootstrap(*args, **kwargs)
        self._heartbeats.start()

    def teardown(self) -> None:
        self._heartbeats.stop()
        with suppress(Exception):
            withdraw_engines(self.connection, self.name)
        super().teardown()

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        """A short lease renewed by the heartbeat thread, not RQ's job timeout + 60 s, so a
        dead worker's jobs are recovered within seconds of the lease running out."""
        return self.runtime.settings.heartbeat_ttl_s

    def heartbeat(self, timeout: int | None = None, pipeline: Pipeline | None = None) -> None:
        """RQ's worker heartbeat, plus this worker's engine announcement for the gateway."""
        super().heartbeat(timeout, pipeline)
        self.announce_engines(pipeline)

    def announce_engines(self, pipeline: Pipeline | None = None) -> None:
        """Tell the gateway which engines this worker serves (and how loading went)."""
        engines = self.runtime.engines
        publish_engines(
            pipeline if pipeline is not None else self.connection,
            self.name,
            engines.states,
            ttl_s=self.worker_ttl + 60,
            default=engines.default,
            details=engines.details,
        )

    def handle_payload(self, message) -> None:
        """RQ's commands, with stop-job honoured for every job of the batch."""
        payload = parse_payload(message)
        if payload.get("command") == "stop-job":
            self._request_job_stop(str(payload.get("job_id")))
        else:
            handle_command(self, payload)

    def request_stop_execution(self, execution_id: str) -> None:
        execution = self.executions.get(execution_id)
        if execution is not None:
            self._request_job_stop(execution.job_id)

    def execute_job(self, job: Job, queue: Queue) -> None:
        if not _is_upscale(job):
            super().execute_job(job, queue)
            return
        self.set_state(WorkerStatus.BUSY)
        self.runtime.metrics.busy.set(1)
        try:
            batch, others = self._collect(job, queue)
            self._run_batch(batch)
            for other, other_queue in others:
                super().execute_job(other, other_queue)
        finally:
            self.runtime.metrics.busy.set(0)
            self.set_state(WorkerStatus.IDLE)

    # -- taking jobs ------------------------------------------------------------------------

    def _collect(
        self, job: Job, queue: Queue
    ) -> tuple[list[tuple[Job, Queue]], list[tuple[Job, Queue]]]:
        """The first job plus whatever else fits: upscale jobs, and others to run after."""
        settings = self.runtime.settings
        batch: list[tuple[Job, Queue]] = [(job, queue)]
        others: list[tuple[Job, Queue]] = []
        tiles = count_tiles(job.args[0], self.runtime.engines)
        deadline = time.monotonic() + settings.max_wait_ms / 1000
        while tiles < settings.max_batch_tiles and not self._stop_requested:
            remaining = deadline - time.monotonic()
            try:
                taken = self.queue_class.dequeue_any(
                    self._ordered_queues,
                    remaining if remaining >= _MIN_BLOCK_S else None,
                    connection=self.connection,
                    job_class=self.job_class,
                    serializer=self.serializer,
                    death_penalty_class=self.death_penalty_class,
                )
            except DequeueTimeout:
                break
            if taken is None:
                break
            if _is_upscale(taken[0]):
                batch.append(taken)
                tiles += count_tiles(taken[0].args[0], self.runtime.engines)
            else:
                others.append(taken)
        return batch, others

    def _start(self, job: Job, queue: Queue) -> BatchItem | None:
        """Mark ``job`` started the way RQ does; None when it was canceled while queued."""
        cancel_requested, status = self._states([job])[0]
        if cancel_requested or status == JobStatus.CANCELED:
            queue.intermediate_queue.remove(job.id)
            self._mark_canceled(job)
            self._notify_end(job, "unknown", PublicStatus.CANCELED)
            return None
        execution = self.prepare_execution(job)
        self.prepare_job_execution(job, remove_from_intermediate_queue=len(self.queues) == 1)
        if job.enqueued_at is not None and job.started_at is not None:
            wait = (job.started_at - job.enqueued_at).total_seconds()
            self.runtime.metrics.queue_wait_seconds.observe(max(0.0, wait))
        return BatchItem(job, queue, execution)

    # -- running a batch --------------------------------------------------------------------

    def _run_batch(self, pairs: Sequence[tuple[Job, Queue]]) -> None:
        items = [item for job, queue in pairs if (item := self._start(job, queue)) is not None]
        groups: dict[BatchKey, list[BatchItem]] = defaultdict(list)
        for item in items:
            try:
                item.work = self.runtime.new_job(item.job.args[0], item.job)
                item.work.prepare()
            except Exception as exc:
                self._fail(item, exc)
                continue
            groups[item.work.batch_key].append(item)
        logger.info(
            "batch of %d job(s) in %d group(s): %s",
            len(items),
            len(groups),
            ", ".join(f"{key.engine} x{len(group)}" for key, group in groups.items()),
        )
        for group in groups.values():
            if group[0].work.whole_image:
                self._run_images(group)
            else:
                self._run_group(group)

    def _run_group(self, group: list[BatchItem]) -> None:
        """All tiles of jobs that share a batch key, ``max_batch_tiles`` per engine call."""
        batch_size = self.runtime.settings.max_batch_tiles
        while True:
            self._checkpoint(group)
            pending = [item for item in group if not item.done]
            if not pending:
                return
            segments = _take(pending, batch_size)
            tiles = torch.cat([segment.tiles for segment in segments])
            started = time.perf_counter()
            slot = segments[0].item.work.slot
            try:
                outputs, batch_size = self.runtime.runner.run(slot, tiles, batch_size)
            except Exception as exc:
                self._isolate(segments, batch_size, exc)
                continue
            self._deliver(segments, outputs, started)

    def _run_images(self, group: list[BatchItem]) -> None:
        """Jobs of an image engine: their whole images in one engine call."""
        self._checkpoint(group)
        pending = [item for item in group if not item.done]
        if not pending:
            return
        slot = pending[0].work.slot
        tasks = [item.work.image_task(self._should_stop(item)) for item in pending]
        started = time.perf_counter()
        try:
            results = self.runtime.runner.restore(slot, tasks)
        except Exception as exc:
            if len(pending) == 1:
                self._fail(pending[0], exc)
                return
            logger.warning("engine call of %d jobs failed (%s); retrying each", len(pending), exc)
            for item in pending:
                self._run_images([item])
            return
        for item, result in zip(pending, results, strict=True):
            if item.done or isinstance(result, Cancelled):
                continue  # ended between steps by _should_stop
            item.work.restored(result, started)
            self._succeed(item)

    def _should_stop(self, item: BatchItem) -> Callable[[], bool]:
        """Asked by the engine before each step of ``item``'s image: ends the job here (and
        says so) if it was canceled, stopped, timed out or taken away."""

        def should_stop() -> bool:
            return item.done or self._interrupt(item, *self._states([item.job])[0])

        return should_stop

    def _isolate(self, segments: list[Segment], batch_size: int, error: Exception) -> None:
        """A call shared by several jobs failed: run each job's tiles alone to find whose."""
        if len(segments) == 1:
            self._fail(segments[0].item, error)
            return
        logger.warning("engine call of %d jobs failed (%s); retrying each", len(segments), error)
        for segment in segments:
            started = time.perf_counter()
            slot = segment.item.work.slot
            try:
                outputs, _ = self.runtime.runner.run(slot, segment.tiles, batch_size)
            except Exception as exc:
                self._fail(segment.item, exc)
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
                self._fail(item, exc)
                continue
            item.next_tile += count
            if item.work.complete:
                self._succeed(item)

    # -- between engine calls ---------------------------------------------------------------

    def _checkpoint(self, group: list[BatchItem]) -> None:
        """Drop canceled, stopped, timed-out and taken-away jobs before the next call."""
        alive = [item for item in group if not item.done]
        for item, state in zip(alive, self._states([i.job for i in alive]), strict=True):
            self._interrupt(item, *state)

    def _interrupt(self, item: BatchItem, cancel_requested: bool, status: str | None) -> bool:
        """End ``item`` here if it must not go on; True when it was ended."""
        if cancel_requested or status == JobStatus.CANCELED:
            self._cancel(item)
        elif self._take_stop_request(item.job.id):
            self._stop(item)
        elif _timed_out(item.job):
            timeout = item.job.timeout
            self._fail(item, JobTimeoutException(f"job exceeded its timeout of {timeout} s"))
        elif status != JobStatus.STARTED:
            self._let_go(item, status)
        else:
            return False
        return True

    def _states(self, jobs: Sequence[Job]) -> list[tuple[bool, str | None]]:
        """(cancel requested, RQ status) of each job, in one round trip."""
        if not jobs:
            return []
        with self.connection.pipeline(transaction=False) as pipeline:
            for job in jobs:
                pipeline.exists(cancel_key(job.id))
                pipeline.hget(job.key, "status")
            replies = pipeline.execute()
        return [
            (bool(canceled), status.decode() if status else None)
            for canceled, status in zip(replies[::2], replies[1::2], strict=True)
        ]

    def _request_job_stop(self, job_id: str) -> None:
        """From the pubsub thread: stop ``job_id`` at the next checkpoint if it is ours."""
        if job_id not in {e.job_id for e in list(self.executions.values())}:
            logger.warning("not working on job %s; stop command ignored", job_id)
            return
        with self._stop_lock:
            self._stop_job_ids.add(job_id)

    def _take_stop_request(self, job_id: str) -> bool:
        with self._stop_lock:
            if job_id in self._stop_job_ids:
                self._stop_job_ids.discard(job_id)
                return True
            return False

    # -- ending a job -----------------------------------------------------------------------

    def _succeed(self, item: BatchItem) -> None:
        """Store the result and hand the job to RQ's success handling (unless interrupted)."""
        if self._interrupt(item, *self._states([item.job])[0]):
            return
        try:
            output = item.work.finish()
        except Exception as exc:
            self._fail(item, exc)
            return
        if self._interrupt(item, *self._states([item.job])[0]):  # while the result was stored
            self.runtime.storage.delete(output["key"])
            return
        item.done = True
        self._finalize_success(item.job, item.queue, item.execution, output)
        self._notify_end(item.job, item.engine, PublicStatus.SUCCEEDED)

    def _fail(self, item: BatchItem, error: BaseException) -> None:
        """RQ's failure handling for one job: a retry while it has retries, else failed."""
        item.done = True
        job = item.job
        if isinstance(error, MegaSRError) and error.status < 500:
            job.retries_left = 0  # bad input: every retry would fail the same way
        retrying = job.should_retry
        store_failure(job, error, retrying)
        self._finalize_failure(
            job, item.queue, item.execution, (type(error), error, error.__traceback__)
        )
        if retrying:
            self.runtime.metrics.jobs_finished.labels(item.engine, "retried").inc()
        else:
            self._notify_end(job, item.engine, PublicStatus.FAILED)

    def _cancel(self, item: BatchItem) -> None:
        """The gateway canceled the job: no result, status canceled, execution cleared."""
        item.done = True
        self._mark_canceled(item.job)
        with self.connection.pipeline() as pipeline:
            self.cleanup_execution(item.job, pipeline=pipeline, execution=item.execution)
            pipeline.execute()
        self._notify_end(item.job, item.engine, PublicStatus.CANCELED)

    def _stop(self, item: BatchItem) -> None:
        """An RQ stop-job command: RQ's stopped status, failed registry, no retry."""
        item.done = True
        job = item.job
        job.ended_at = now()
        try:
            execute_stopped_callback(job, self.death_penalty_class)
        except Exception:
            logger.exception("stopped callback of job %s raised", job.id)
        self._stopped_job_id = job.id
        self.handle_job_failure(
            job, item.queue, exc_string="Job stopped by user.", execution=item.execution
        )
        self._notify_end(job, item.engine, PublicStatus.CANCELED)

    def _let_go(self, item: BatchItem, status: str | None) -> None:
        """RQ gave the job to someone else (our lease lapsed): stop working on it, quietly."""
        logger.warning("job %s is %s, no longer ours; dropping it", item.job.id, status)
        item.done = True
        with self.connection.pipeline() as pipeline:
            self.cleanup_execution(item.job, pipeline=pipeline, execution=item.execution)
            pipeline.execute()

    def _mark_canceled(self, job: Job) -> None:
        with suppress(InvalidJobOperation):  # the gateway got there first
            job.cancel()
        job.meta[META_STAGE] = "canceled"
        job.save_meta()

    def _notify_end(self, job: Job, engine: str, status: PublicStatus) -> None:
        self.runtime.metrics.jobs_finished.labels(engine, str(status)).inc()
        try:
            self.runtime.notifier.notify(job, status)
        except Exception:
            logger.exception("cannot queue the webhook of job %s", job.id)


def _is_upscale(job: Job) -> bool:
    try:
        return job.func_name == TASK_FUNC
    except DeserializationError:
        return False  # RQ's own path records the failure


def _timed_out(job: Job) -> bool:
    if not job.timeout or job.timeout < 0 or job.started_at is None:
        return False
    return (now() - job.started_at).total_seconds() > job.timeout


def _take(items: list[BatchItem], size: int) -> list[Segment]:
    """The next ``size`` tiles, in job order, as one segment per job."""
    segments = []
    for item in items:
        count = min(size, item.tiles_left)
        if count:
            segments.append(Segment(item, item.next_tile, count))
            size -= count
        if size == 0:
            break
    return segments
