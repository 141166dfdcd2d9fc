"""The worker's whole contract with RQ: the hooks it overrides and the private names it uses.

RQ (pinned ``rq==3.0.*``) runs the worker's loop: it registers the worker, blocks for the
first job, beats, listens for commands, cleans the registries between jobs and turns SIGTERM
into a warm shutdown. The batching scheduler (:mod:`.batching`) does everything else.
:class:`RQWorker` is the seam between the two and the only code in the project that subclasses
an RQ worker or reaches an RQ private name:

- RQ calls the scheduler through the hooks named in :data:`HOOKS`, each forwarded to one
  method of :class:`WorkerEvents`, and dequeues through :class:`EngineQueue`;
- the scheduler takes more jobs and ends them through :class:`RQWorker`'s own methods, which
  keep RQ's records true (registries, results, retries, the failed registry, ``rq info``) and
  are the only users of the names in :data:`PRIVATE_NAMES`.

Why private names at all: RQ ends a job only from inside ``perform_job``, one job at a time,
and has no public call to end a job that ran elsewhere, to requeue one at the front, or to
stop its loop from inside a job. ``tests/test_worker_rq_adapter.py`` checks every name and
signature listed here against the installed RQ, and each hook's place in RQ's flow (the
transaction that writes a job's end, the warm shutdown), so an upgrade that moves one fails
there, naming it, instead of somewhere in the middle of a batch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from contextlib import suppress
from typing import Any, Protocol

from redis import Redis
from redis.client import Pipeline
from rq.callbacks import execute_stopped_callback
from rq.command import handle_command, parse_payload
from rq.exceptions import DequeueTimeout, InvalidJobOperation
from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.queue import Queue
from rq.serializers import Serializer
from rq.timeouts import BaseDeathPenalty
from rq.utils import now
from rq.worker import SimpleWorker, WorkerStatus

from megasr.queue import JOB_SERIALIZER
from megasr.recovery import maintain_queue
from megasr.worker.engine_queue import MIN_BLOCK_S, take_first

logger = logging.getLogger("megasr.worker.rq_adapter")

# RQ's hooks this module overrides, "Class.name" -> the parameters RQ 3.0 calls them with.
HOOKS: dict[str, tuple[str, ...]] = {
    "SimpleWorker.bootstrap": ("self", "logging_level", "date_format", "log_format"),
    "SimpleWorker.teardown": ("self",),
    "SimpleWorker.subscribe": ("self",),
    "SimpleWorker.clean_registries": ("self",),
    "SimpleWorker.get_heartbeat_ttl": ("self", "job", "working_time"),
    "SimpleWorker.heartbeat": ("self", "timeout", "pipeline"),
    "SimpleWorker.handle_payload": ("self", "message"),
    "SimpleWorker.request_stop_execution": ("self", "execution_id"),
    "SimpleWorker.execute_job": ("self", "job", "queue"),
    "SimpleWorker.handle_warm_shutdown_request": ("self",),
    "SimpleWorker.cleanup_execution": ("self", "job", "pipeline", "execution"),
    "Queue.dequeue_any": (
        "queues",
        "timeout",
        "connection",
        "job_class",
        "serializer",
        "death_penalty_class",
    ),
}

# RQ's private names this module uses: "Class.name" -> the parameters of a method, or None
# for an attribute an instance holds.
PRIVATE_NAMES: dict[str, tuple[str, ...] | None] = {
    "SimpleWorker._ordered_queues": None,  # what RQ's loop dequeues from, in order
    "SimpleWorker._exc_handlers": None,  # the exception handlers, for the registry cleanup
    "SimpleWorker._stop_requested": None,  # ends RQ's loop after the job in hand
    "SimpleWorker._stopped_job_id": None,  # marks a job STOPPED rather than FAILED
    "SimpleWorker._pubsub_exception_handler": ("self", "exc", "pubsub", "pubsub_thread"),
    "SimpleWorker._finalize_success": ("self", "job", "queue", "execution", "return_value"),
    "SimpleWorker._finalize_failure": ("self", "job", "queue", "execution", "exc_info"),
    "Queue._enqueue_job": ("self", "job", "pipeline", "at_front", "unique"),
    "Job._status": None,  # the status RQ's finishing code reads from the object
}

# RQ's command channel is read in waits this long (RQ's own: 60 s); see RQWorker.subscribe.
PUBSUB_WAIT_S = 1


class EngineQueue(Queue):
    """RQ's queue, whose dequeue from several queues goes through the intermediate lists
    (:mod:`megasr.worker.engine_queue`); from one queue it is RQ's own, which already does."""

    @classmethod
    def dequeue_any(
        cls,
        queues: Iterable[Queue],
        timeout: int | None,
        connection: Redis,
        job_class: type[Job] | None = None,
        serializer: Serializer | str | None = None,
        death_penalty_class: type[BaseDeathPenalty] | None = None,
    ) -> tuple[Job, Queue] | None:
        queues = list(queues)
        if len(queues) < 2:
            return super().dequeue_any(
                queues, timeout, connection, job_class, serializer, death_penalty_class
            )
        return take_first(queues, timeout, connection, job_class or cls.job_class)


class WorkerEvents(Protocol):
    """What RQ's loop tells the scheduler, one method per hook."""

    def started(self) -> None:
        """The worker is registered and about to take its first job."""

    def draining(self) -> None:
        """SIGTERM or SIGINT: finish the batch in hand, take no new job."""

    def stopped(self) -> None:
        """The loop ended; RQ deregisters the worker next."""

    def run(self, job: Job, queue: Queue) -> None:
        """An upscale job RQ dequeued: run it and whatever else fits its batch."""

    def stop_job(self, job_id: str) -> None:
        """An RQ stop-job command (from the command thread)."""

    def announce(self, client: Redis | Pipeline) -> None:
        """Write what the gateway reads about this worker beside RQ's heartbeat."""

    def ending(self, job: Job, pipeline: Pipeline) -> None:
        """Inside the transaction that writes ``job``'s end: queue writes that must commit
        with it (called again if RQ retries the transaction)."""


class RQWorker(SimpleWorker):
    """An RQ ``SimpleWorker`` (one process, engines loaded once, no fork per job) that hands
    its upscale jobs to ``events`` and ends them the way RQ's own ``perform_job`` would."""

    queue_class = EngineQueue

    def __init__(
        self,
        connection: Redis,
        events: WorkerEvents,
        *,
        name: str | None,
        worker_ttl_s: int,
        maintenance_interval_s: int,
        lease_s: int,
        exception_handlers: Sequence[Callable[..., bool]],
        is_batched: Callable[[Job], bool],
    ) -> None:
        super().__init__(
            [],  # the engines' queues, once they are loaded: see listen()
            name=name,
            connection=connection,
            serializer=JOB_SERIALIZER,
            worker_ttl=worker_ttl_s,
            maintenance_interval=maintenance_interval_s,
            exception_handlers=list(exception_handlers),
        )
        self.events = events
        self.lease_s = lease_s
        self.is_batched = is_batched

    # -- the loop: what the scheduler asks of RQ ----------------------------------------------

    def listen(self, queues: Iterable[Queue]) -> None:
        """Take jobs from ``queues``, in this order (before :meth:`work`)."""
        self.queues = list(queues)
        self._ordered_queues = self.queues[:]

    @property
    def stop_requested(self) -> bool:
        """A warm shutdown is under way: take no more jobs."""
        return self._stop_requested

    def stop_after_batch(self) -> None:
        """End RQ's loop once the batch in hand is over (the worker then exits)."""
        self._stop_requested = True

    def dequeue(self, timeout_s: float) -> tuple[Job, Queue] | None:
        """One more job from any listened queue, waiting up to ``timeout_s`` (under a
        millisecond: not at all), moved to its queue's intermediate list as RQ's loop does;
        None when none came."""
        try:
            return self.queue_class.dequeue_any(
                self._ordered_queues,
                timeout_s if timeout_s >= MIN_BLOCK_S else None,
                connection=self.connection,
                job_class=self.job_class,
                serializer=self.serializer,
                death_penalty_class=self.death_penalty_class,
            )
        except DequeueTimeout:
            return None

    # -- ending a job, as RQ's perform_job would ----------------------------------------------

    def end_succeeded(self, job: Job, queue: Queue, execution: Execution, result: Any) -> None:
        """RQ's success handling: result, status, registries, callbacks, in RQ's transaction."""
        self._finalize_success(job, queue, execution, result)

    def end_failed(
        self, job: Job, queue: Queue, execution: Execution, error: BaseException
    ) -> None:
        """RQ's failure handling: a retry while the job has retries, else failed for good."""
        self._finalize_failure(job, queue, execution, (type(error), error, error.__traceback__))

    def end_stopped(self, job: Job, queue: Queue, execution: Execution) -> None:
        """RQ's stop-job handling: status STOPPED, the failed registry, no retry."""
        job.ended_at = now()
        try:
            execute_stopped_callback(job, self.death_penalty_class)
        except Exception:
            logger.exception("stopped callback of job %s raised", job.id)
        self._stopped_job_id = job.id
        self.handle_job_failure(job, queue, exc_string="Job stopped by user.", execution=execution)

    def end_canceled(self, job: Job, execution: Execution, meta: bytes) -> None:
        """Status CANCELED (unless the gateway set it first), the canceled registry, the
        execution cleared and ``meta`` written, in one transaction."""
        with self.connection.pipeline() as pipeline:
            with suppress(InvalidJobOperation):  # the gateway got there first
                job.cancel(pipeline=pipeline)
            pipeline.hset(job.key, "meta", meta)
            self.cleanup_execution(job, pipeline=pipeline, execution=execution)
            pipeline.execute()

    def hand_back(self, job: Job, queue: Queue, execution: Execution, fields: dict) -> None:
        """Back to the front of its queue without spending a retry, ``fields`` written to
        its hash, this worker's execution cleared, in one transaction."""
        with self.connection.pipeline() as pipeline:
            self.cleanup_execution(job, pipeline=pipeline, execution=execution)
            pipeline.hset(job.key, mapping=fields)
            queue._enqueue_job(job, pipeline=pipeline, at_front=True)
            pipeline.execute()

    def forget(self, job: Job, execution: Execution) -> None:
        """Remove this worker's execution of ``job`` (its own records only)."""
        with self.connection.pipeline() as pipeline:
            self.cleanup_execution(job, pipeline=pipeline, execution=execution)
            pipeline.execute()

    # -- RQ's hooks ---------------------------------------------------------------------------

    def bootstrap(self, *args, **kwargs) -> None:
        super().bootstrap(*args, **kwargs)
        self.events.started()

    def teardown(self) -> None:
        self.events.stopped()
        super().teardown()

    def handle_warm_shutdown_request(self) -> None:
        super().handle_warm_shutdown_request()
        self.events.draining()

    def execute_job(self, job: Job, queue: Queue) -> None:
        if not self.is_batched(job):
            super().execute_job(job, queue)
            return
        self.set_state(WorkerStatus.BUSY)
        try:
            self.events.run(job, queue)
        finally:
            self.set_state(WorkerStatus.IDLE)

    def cleanup_execution(
        self, job: Job, pipeline: Pipeline, execution: Execution | None = None
    ) -> None:
        """RQ calls this inside the transaction that writes a job's end (success, failure,
        retry, stop), and so does every ending above: what the scheduler adds here commits
        with the job's terminal status, or not at all."""
        super().cleanup_execution(job, pipeline=pipeline, execution=execution)
        self.events.ending(job, pipeline)

    def subscribe(self) -> None:
        """RQ's command channel, read in one-second waits instead of RQ's 60: redis-py's
        ``stop()`` joins the reading thread, which after the unsubscribe waits out its whole
        wait, so a warm shutdown could otherwise hang for up to a minute."""
        self.log.info("Worker %s: subscribing to channel %s", self.name, self.pubsub_channel_name)
        self.pubsub = self.connection.pubsub()
        self.pubsub.subscribe(**{self.pubsub_channel_name: self.handle_payload})
        self.pubsub_thread = self.pubsub.run_in_thread(
            sleep_time=PUBSUB_WAIT_S, daemon=True, exception_handler=self._pubsub_exception_handler
        )

    def handle_payload(self, message) -> None:
        """RQ's commands, with stop-job honoured for every job of the batch (RQ delivers it
        only for the one job it thinks is current)."""
        payload = parse_payload(message)
        if payload.get("command") == "stop-job":
            self.events.stop_job(str(payload.get("job_id")))
        else:
            handle_command(self, payload)

    def request_stop_execution(self, execution_id: str) -> None:
        execution = self.executions.get(execution_id)
        if execution is not None:
            self.events.stop_job(execution.job_id)

    def clean_registries(self) -> None:
        """The project's cleanup pass (:mod:`megasr.recovery`) over this worker's queues."""
        for queue in self.queues:
            maintain_queue(queue, self._exc_handlers, self.lease_s)
        self.last_cleaned_at = now()

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        """A short lease renewed by the heartbeat thread, not RQ's job timeout + 60 s, so a
        dead worker's jobs are recovered within seconds of the lease running out."""
        return self.lease_s

    def heartbeat(self, timeout: int | None = None, pipeline: Pipeline | None = None) -> None:
        """RQ's worker heartbeat, plus what the scheduler announces beside it."""
        super().heartbeat(timeout, pipeline)
        self.events.announce(pipeline if pipeline is not None else self.connection)


def mark_started(job: Job, worker_name: str, started_at) -> None:
    """What RQ's own start sets on the job object, after a start written by another path
    (:mod:`megasr.worker.lease`): RQ's finishing code reads these from the object."""
    job.worker_name = worker_name
    job.started_at = job.last_heartbeat = started_at
    job._status = JobStatus.STARTED
