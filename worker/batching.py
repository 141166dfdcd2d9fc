"""The batching worker: tiles of many jobs in each engine call, every job finished on its own.

:class:`BatchingWorker` is an RQ ``SimpleWorker`` (engines stay loaded in the one process; no
fork per job) that listens on the queues of the engines it serves. RQ's loop blocks for the
first job; :meth:`BatchingWorker.execute_job` then takes more upscale jobs without blocking
longer than ``max_wait_ms``, until ``max_batch_tiles`` tiles are in hand, and starts each one
(:mod:`megasr.worker.lease`: out of the intermediate list, started and owned, in one step), so
the started registry, ``rq info`` and dashboards show the truth. Jobs are grouped by
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
retries, callbacks and RQ's failed registry stay RQ's), and only after the worker has
claimed it: a worker whose lease on a job lapsed (it froze, or lost Redis, and RQ gave the
job to another worker) drops the job instead, so a job never ends twice.

What can go wrong stays with the job it belongs to: a job that cannot be decoded fails before
any engine call; an engine error in a call shared by several jobs re-runs each job's tiles on
their own, so only the job that still fails does. A job whose input is bad (a 4xx problem) is
not retried, since every retry would fail the same way.

Between engine calls the worker looks at each job: canceled by the gateway (its cancel key,
see :mod:`megasr.cancellation`, or RQ's canceled status) drops it and marks it canceled; an
RQ stop-job command (which RQ delivers only for a worker's first job, so this worker handles
it for each) stops it; past its timeout fails it; no longer this worker's drops it without a
result.

When the device itself fails, the worker gives up the whole batch and stops: an engine call
that makes no progress for ``watchdog_timeout_s`` (:mod:`.watchdog`; the process then exits,
since the hung call cannot be interrupted), or a sticky CUDA error (:mod:`.device_faults`).
A job that was alone in the failed call fails (RQ retries it while it has retries); every
other job in hand goes back to the front of its queue without spending a retry and runs
alone from then on. ``/healthz`` answers 503 from that moment.

SIGTERM lets the batch in hand finish, then the worker exits (RQ's warm shutdown); no new job
is taken once it arrives.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import NamedTuple, TypeVar

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

from megasr.engine_status import publish_engines, withdraw_engines
from megasr.errors import EngineError, MegaSRError
from megasr.jobs import META_STAGE, TASK_FUNC
from megasr.jobs import JobStatus as PublicStatus
from megasr.model.engines.base import Cancelled
from megasr.queue import AUTO_QUEUE, JOB_SERIALIZER, get_queue
from megasr.recovery import ALONE_FIELD, maintain_queue, on_abandoned, requeue_from_intermediate
from megasr.worker.device_faults import is_fatal_device_error
from megasr.worker.engine_queue import MIN_BLOCK_S, EngineQueue
from megasr.worker.health import EXIT_UNHEALTHY, WorkerHealth, running_once_started
from megasr.worker.heartbeat import HeartbeatThread
from megasr.worker.lease import JobState, Leases
from megasr.worker.runtime import WorkerRuntime
from megasr.worker.upscale_job import BatchKey, UpscaleJob, count_tiles, store_failure
from megasr.worker.watchdog import Watchdog

logger = logging.getLogger("megasr.worker.batching")

T = TypeVar("T")


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


class DeviceLost(Exception):
    """The device failed under an engine call of ``items``: the batch is given up."""

    def __init__(self, reason: str, items: list[BatchItem]) -> None:
        super().__init__(reason)
        self.items = items


class BatchingWorker(SimpleWorker):
    """An RQ worker that runs the tiles of many upscale jobs per engine call."""

    queue_class = EngineQueue

    def __init__(self, runtime: WorkerRuntime, connection: Redis, name: str | None = None) -> None:
        settings = runtime.settings
        super().__init__(
            [],  # the engines' queues, once they are loaded: see listen()
            name=name,
            connection=connection,
            serializer=JOB_SERIALIZER,
            worker_ttl=settings.worker_ttl_s,
            maintenance_interval=settings.worker_maintenance_interval_s,
            # Called by the registry cleanup for jobs a dead worker left behind.
            exception_handlers=[on_abandoned, runtime.notifier.on_abandoned],
        )
        self.runtime = runtime
        self.leases = Leases(
            connection, self.name, settings.heartbeat_ttl_s, settings.heartbeat_interval_s
        )
        self.health = WorkerHealth()
        self.watchdog = Watchdog(settings.watchdog_timeout_s, self._on_stall)
        runtime.runner.on_progress = self.watchdog.progress
        self._heartbeats = HeartbeatThread(
            self, self.leases, settings.heartbeat_interval_s, lambda: not self.watchdog.stalled
        )
        self.health.checks += [
            ("the heartbeat thread", running_once_started(self._heartbeats)),
            ("the watchdog", running_once_started(self.watchdog)),
        ]
        self._batch: list[BatchItem] = []  # every job in hand
        self._in_call: list[BatchItem] = []  # the jobs of the engine call running now
        self._ending = threading.Lock()
        self._stop_job_ids: set[str] = set()
        self._stop_lock = threading.Lock()

    def listen(self, engines: Iterable[str]) -> None:
        """Take jobs from the queues of ``engines``, and from the queue of jobs for any
        worker's default engine (before :meth:`work`)."""
        settings = self.runtime.settings
        names = [*engines, AUTO_QUEUE]
        self.queues = [get_queue(settings, e, self.connection, self.queue_class) for e in names]
        self._ordered_queues = self.queues[:]

    # -- RQ hooks ---------------------------------------------------------------------------

    def bootstrap(self, *args, **kwargs) -> None:
        super().bootstrap(*args, **kwargs)
        self._heartbeats.start()
        self.watchdog.start()

    def teardown(self) -> None:
        self.watchdog.stop()
        self._heartbeats.stop()
        with suppress(Exception):
            withdraw_engines(self.connection, self.name)
        super().teardown()

    def subscribe(self) -> None:
        """RQ's command channel, read in one-second waits instead of RQ's 60: redis-py's
        ``stop()`` joins the reading thread, which after the unsubscribe waits out its whole
        wait, so a warm shutdown could otherwise hang for up to a minute."""
        self.log.info("Worker %s: subscribing to channel %s", self.name, self.pubsub_channel_name)
        self.pubsub = self.connection.pubsub()
        self.pubsub.subscribe(**{self.pubsub_channel_name: self.handle_payload})
        self.pubsub_thread = self.pubsub.run_in_thread(
            sleep_time=1, daemon=True, exception_handler=self._pubsub_exception_handler
        )

    def clean_registries(self) -> None:
        """The project's cleanup pass (:mod:`megasr.recovery`) over this worker's queues."""
        grace = self.runtime.settings.heartbeat_ttl_s
        for queue in self.queues:
            maintain_queue(queue, self._exc_handlers, grace)
        self.last_cleaned_at = now()

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
            self._run_batch(self._collect(job, queue))
        except DeviceLost as lost:
            self.health.fail(str(lost))
            self._give_up(EngineError(str(lost)), lost.items)
            self._stop_requested = True  # RQ's loop ends; `megasr worker` exits unhealthy
        except Exception as exc:  # Redis or storage gone past their retries, a callback raised
            logger.exception("the batch failed outside the engine; handing its jobs back")
            alone = self._batch if len(self._batch) == 1 else []  # a crash's rule: see _give_up
            self._give_up(EngineError(f"the worker failed: {type(exc).__name__}"), alone)
        finally:
            self._batch = []
            self.runtime.metrics.busy.set(0)
            self.set_state(WorkerStatus.IDLE)

    # -- taking jobs ------------------------------------------------------------------------

    def _collect(self, job: Job, queue: Queue) -> list[tuple[Job, Queue]]:
        """The first job plus whatever else fits. A job that must run alone (it was in a
        batch when a worker crashed) runs alone; another one, or a job of another kind, goes
        back to the front of its queue for the next round."""
        settings = self.runtime.settings
        batch: list[tuple[Job, Queue]] = [(job, queue)]
        if self._runs_alone(job):
            return batch
        tiles = count_tiles(job.args[0], self.runtime.engines)
        deadline = time.monotonic() + settings.max_wait_ms / 1000
        while tiles < settings.max_batch_tiles and not self._stop_requested:
            remaining = deadline - time.monotonic()
            try:
                taken = self.queue_class.dequeue_any(
                    self._ordered_queues,
                    remaining if remaining >= MIN_BLOCK_S else None,
                    connection=self.connection,
                    job_class=self.job_class,
                    serializer=self.serializer,
                    death_penalty_class=self.death_penalty_class,
                )
            except DequeueTimeout:
                break
            if taken is None:
                break
            if not _is_upscale(taken[0]) or self._runs_alone(taken[0]):
                requeue_from_intermediate(taken[1], taken[0].id)
                break
            batch.append(taken)
            tiles += count_tiles(taken[0].args[0], self.runtime.engines)
        return batch

    def _runs_alone(self, job: Job) -> bool:
        return bool(self.connection.hget(job.key, ALONE_FIELD))

    def _start(self, job: Job, queue: Queue, batch_size: int) -> BatchItem | None:
        """Start ``job`` as this worker's; None when it was canceled while queued (the
        gateway told its client) or a cleaner already queued it again."""
        execution = self.prepare_execution(job)
        outcome = self.leases.start(job, queue, execution, batch_size)
        if outcome != "started":
            self._forget(job, execution)
            if outcome == "canceled":
                self._mark_canceled(job)
            else:
                logger.warning("job %s was queued again before it started; skipped", job.id)
            return None
        if job.enqueued_at is not None:
            wait = (job.started_at - job.enqueued_at).total_seconds()
            self.runtime.metrics.queue_wait_seconds.observe(max(0.0, wait))
        return BatchItem(job, queue, execution)

    # -- running a batch --------------------------------------------------------------------

    def _run_batch(self, pairs: Sequence[tuple[Job, Queue]]) -> None:
        for job, queue in pairs:
            if (item := self._start(job, queue, len(pairs))) is not None:
                self._batch.append(item)
        groups: dict[BatchKey, list[BatchItem]] = defaultdict(list)
        for item in self._batch:
            try:
                item.work = self.runtime.new_job(
                    item.job.args[0], item.job, self._meta_writer(item.execution)
                )
                item.work.prepare()
            except Exception as exc:
                self._fail(item, exc)
                continue
            groups[item.work.batch_key].append(item)
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
                self._run_group(group)

    def _meta_writer(self, execution: Execution) -> Callable[[Job], object]:
        return lambda job: self.leases.save_meta(job, execution)

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
            items = [segment.item for segment in segments]
            try:
                outputs, batch_size = self._engine_call(
                    items, self.runtime.runner.run, slot, tiles, batch_size
                )
            except DeviceLost:
                raise
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
            results = self._engine_call(pending, self.runtime.runner.restore, slot, tasks)
        except DeviceLost:
            raise
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

    def _engine_call(self, items: list[BatchItem], call: Callable[..., T], *args) -> T:
        """One engine call for ``items``, under the watchdog; a sticky device error raises
        :class:`DeviceLost`."""
        self._in_call = items
        try:
            with self.watchdog.watching():
                return call(*args)
        except Exception as exc:
            if is_fatal_device_error(exc):
                raise DeviceLost(f"the device failed: {exc}", items) from exc
            raise
        finally:
            self._in_call = []

    def _should_stop(self, item: BatchItem) -> Callable[[], bool]:
        """Asked by the engine before each step of ``item``'s image: ends the job here (and
        says so) if it was canceled, stopped, timed out or taken away."""

        def should_stop() -> bool:
            return item.done or self._interrupt(item, self._job_state(item))

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
                outputs, _ = self._engine_call(
                    [segment.item], self.runtime.runner.run, slot, segment.tiles, batch_size
                )
            except DeviceLost:
                raise
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
        states = self.leases.states([(item.job, item.execution) for item in alive])
        for item, state in zip(alive, states, strict=True):
            self._interrupt(item, state)

    def _job_state(self, item: BatchItem) -> JobState:
        return self.leases.state(item.job, item.execution)

    def _interrupt(self, item: BatchItem, state: JobState) -> bool:
        """End ``item`` here if it must not go on; True when it was ended."""
        if state.cancel_requested or state.status == JobStatus.CANCELED:
            self._cancel(item)
        elif self._take_stop_request(item.job.id):
            self._stop(item)
        elif not state.owned:
            self._let_go(item, state.status)
        elif _timed_out(item.job):
            timeout = item.job.timeout
            self._fail(item, JobTimeoutException(f"job exceeded its timeout of {timeout} s"))
        else:
            return False
        return True

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

    def _end(self, item: BatchItem) -> bool:
        """Take ``item`` out of the batch, once: False when another thread (the watchdog)
        or an earlier step already ended it."""
        with self._ending:
            if item.done:
                return False
            item.done = True
            return True

    def _claimed(self, item: BatchItem) -> bool:
        """End ``item`` and claim it; a job that is no longer ours is let go instead."""
        if not self._end(item):
            return False
        if self.leases.claim(item.execution):
            return True
        logger.warning("job %s is no longer ours (lease lapsed); dropping it", item.job.id)
        self._forget(item.job, item.execution)
        return False

    def _succeed(self, item: BatchItem) -> None:
        """Store the result, then hand the job to RQ's success handling, if still ours.

        The result object is stored before the job is marked finished, so a finished job
        always has its result; a worker that lost the job leaves the object where it is (the
        key is the job's, and the job's new owner writes the same key)."""
        if self._interrupt(item, self._job_state(item)):
            return
        try:
            output = item.work.finish()
        except Exception as exc:
            self._fail(item, exc)
            return
        state = self._job_state(item)
        if state.cancel_requested or state.status == JobStatus.CANCELED:
            with suppress(MegaSRError):  # storage away: the retention sweep removes it later
                self.runtime.storage.delete(output["key"])  # canceled while it was stored
            self._cancel(item)
            return
        if not self._claimed(item):
            return
        self._finalize_success(item.job, item.queue, item.execution, output)
        self._notify_end(item.job, item.engine, PublicStatus.SUCCEEDED)

    def _fail(self, item: BatchItem, error: BaseException) -> None:
        """RQ's failure handling for one job: a retry while it has retries, else failed."""
        if not self._claimed(item):
            return
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

    def _release(self, item: BatchItem) -> None:
        """Hand the job back to the front of its queue without spending a retry (the device
        failed under a batch it did not cause); it runs alone from now on."""
        if not self._claimed(item):
            return
        job = item.job
        job.meta[META_STAGE] = "retrying"
        with self.connection.pipeline() as pipeline:
            self.cleanup_execution(job, pipeline=pipeline, execution=item.execution)
            pipeline.hset(job.key, ALONE_FIELD, "1")
            item.queue._enqueue_job(job, pipeline=pipeline, at_front=True)
            pipeline.execute()
        self.runtime.metrics.jobs_finished.labels(item.engine, "retried").inc()

    def _cancel(self, item: BatchItem) -> None:
        """The gateway canceled the job: no result, status canceled, execution cleared."""
        if not self._end(item):
            return
        owned = self.leases.owns(item.job, item.execution)
        self._forget(item.job, item.execution)
        if owned:  # else its new owner tells the client
            self._mark_canceled(item.job)
            self._notify_end(item.job, item.engine, PublicStatus.CANCELED)

    def _stop(self, item: BatchItem) -> None:
        """An RQ stop-job command: RQ's stopped status, failed registry, no retry."""
        if not self._end(item):
            return
        job = item.job
        if not self.leases.owns(job, item.execution):
            self._forget(job, item.execution)
            return
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
        if self._end(item):
            logger.warning("job %s is %s and no longer ours; dropping it", item.job.id, status)
            self._forget(item.job, item.execution)

    def _forget(self, job: Job, execution: Execution) -> None:
        """Remove this worker's execution of ``job`` (its own records only)."""
        with self.connection.pipeline() as pipeline:
            self.cleanup_execution(job, pipeline=pipeline, execution=execution)
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
                    self._fail(item, error)
                else:
                    self._release(item)
            except Exception:
                logger.exception("cannot hand back job %s; its lease will lapse", item.job.id)

    def _on_stall(self, idle_s: float) -> None:
        """From the watchdog's thread, while the engine call still hangs in the main one."""
        timeout = self.runtime.settings.watchdog_timeout_s
        problem = f"an engine call made no progress for {idle_s:.0f} s (timeout {timeout:g} s)"
        self.health.fail(problem)
        self._give_up(EngineError(f"{problem}; the worker restarts"), self._in_call)
        with suppress(Exception):
            withdraw_engines(self.connection, self.name)
            self.register_death()
        self.runtime.close()  # deliver the webhooks of the jobs just ended
        logger.error("exiting (%d): the engine call cannot be interrupted", EXIT_UNHEALTHY)
        logging.shutdown()
        os._exit(EXIT_UNHEALTHY)


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
