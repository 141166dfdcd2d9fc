"""Taking a batch: the job RQ's loop dequeued, then whatever else fits, each one started.

After the first job, more upscale jobs are taken without waiting longer than
``max_wait_ms`` in all, until ``max_batch_tiles`` tiles are in hand. A job that must run
alone (it was in a batch when a worker crashed, see :mod:`megasr.recovery`) runs alone; one
met later, or a job of another kind, goes back to the front of its queue for the next round.

Each job is then started as this worker's (:meth:`~megasr.worker.lease.Leases.start`: out of
its queue's intermediate list, started and owned, in one step), so the started registry,
``rq info`` and dashboards show the truth. A job canceled while it waited is marked canceled
and dropped (the gateway told its client); one a cleaner already queued again is skipped.
"""

from __future__ import annotations

import logging
import time

from rq.exceptions import DeserializationError
from rq.job import Job
from rq.queue import Queue

from megasr.jobs import TASK_FUNC
from megasr.recovery import ALONE_FIELD, requeue_from_intermediate
from megasr.worker.batch_items import BatchItem
from megasr.worker.job_endings import JobEndings
from megasr.worker.lease import Leases
from megasr.worker.rq_adapter import RQWorker
from megasr.worker.runtime import WorkerRuntime
from megasr.worker.upscale_job import count_tiles

logger = logging.getLogger("megasr.worker.intake")


def is_upscale(job: Job) -> bool:
    """Whether ``job`` is the gateway's upscale task, the only kind this worker batches."""
    try:
        return job.func_name == TASK_FUNC
    except DeserializationError:
        return False  # RQ's own path records the failure


class Intake:
    """Fills the batch in hand."""

    def __init__(
        self, rq: RQWorker, leases: Leases, runtime: WorkerRuntime, endings: JobEndings
    ) -> None:
        self.rq = rq
        self.leases = leases
        self.runtime = runtime
        self.endings = endings

    def take(self, job: Job, queue: Queue, batch: list[BatchItem]) -> None:
        """Start ``job`` and whatever else fits, adding each started job to ``batch`` as it
        starts (so a failure halfway leaves the batch knowing what it holds)."""
        pairs = self._collect(job, queue)
        for taken, origin in pairs:
            if (item := self._start(taken, origin, len(pairs))) is not None:
                batch.append(item)

    def _collect(self, job: Job, queue: Queue) -> list[tuple[Job, Queue]]:
        settings = self.runtime.settings
        pairs = [(job, queue)]
        if self._runs_alone(job):
            return pairs
        tiles = count_tiles(job.args[0], self.runtime.engines)
        deadline = time.monotonic() + settings.max_wait_ms / 1000
        while tiles < settings.max_batch_tiles and not self.rq.stop_requested:
            taken = self.rq.dequeue(deadline - time.monotonic())
            if taken is None:
                break
            if not is_upscale(taken[0]) or self._runs_alone(taken[0]):
                requeue_from_intermediate(taken[1], taken[0].id)
                break
            pairs.append(taken)
            tiles += count_tiles(taken[0].args[0], self.runtime.engines)
        return pairs

    def _runs_alone(self, job: Job) -> bool:
        return bool(self.rq.connection.hget(job.key, ALONE_FIELD))

    def _start(self, job: Job, queue: Queue, batch_size: int) -> BatchItem | None:
        execution = self.rq.prepare_execution(job)
        outcome = self.leases.start(job, queue, execution, batch_size)
        if outcome != "started":
            if outcome == "canceled":
                self.endings.canceled_before_start(job, execution)
            else:
                self.rq.forget(job, execution)
                logger.warning("job %s was queued again before it started; skipped", job.id)
            return None
        if job.enqueued_at is not None:
            wait = (job.started_at - job.enqueued_at).total_seconds()
            self.runtime.metrics.queue_wait_seconds.observe(max(0.0, wait))
        return BatchItem(job, queue, execution)
