"""How a job leaves the batch in hand: once, only while it is still this worker's, and with
its webhook written in the same transaction as its end.

A job *ends* when it succeeds, fails (RQ retries it while it has retries), is stopped by an
RQ stop-job command or is canceled by the gateway. For each, the worker first claims the job
(:meth:`~megasr.worker.lease.Leases.claim`: still its own, with a heartbeat of lease left,
which the claim extends), then RQ writes the end in one transaction: status, registries and,
for a success, RQ's result holding the output's storage key. The webhook's outbox entry is
queued into that very transaction (:meth:`JobEndings.queue_webhook`, which the RQ adapter
calls from inside it), so the end and its webhook commit together or not at all:

- a worker that dies before the transaction leaves the job started under a lease that
  lapses; the cleanup runs it again (or fails it on its last try, with the webhook), and the
  end is written once, by whoever finishes it;
- a worker that dies after it leaves the webhook in the outbox, which every gateway and
  worker drains.

A job also leaves the batch without ending: handed back to its queue (the device failed
under a batch it did not cause), let go (its lease lapsed and RQ gave it to another worker),
or dropped when canceled before it started. None of these tells the client anything.

Each job leaves the batch once (:meth:`JobEndings.end_once`), even when the watchdog thread
gives the batch up while the main thread is still in it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

from redis.client import Pipeline
from rq.executions import Execution
from rq.job import Job

from megasr.errors import MegaSRError
from megasr.jobs import META_STAGE
from megasr.jobs import JobStatus as PublicStatus
from megasr.recovery import ALONE_FIELD
from megasr.worker.batch_items import BatchItem
from megasr.worker.lease import Leases
from megasr.worker.rq_adapter import RQWorker
from megasr.worker.runtime import WorkerRuntime
from megasr.worker.stop_points import StopPoints
from megasr.worker.upscale_job import store_failure

logger = logging.getLogger("megasr.worker.job_endings")


class JobEndings:
    """Every way a job leaves the batch, each fenced by the job's lease."""

    def __init__(
        self, rq: RQWorker, leases: Leases, runtime: WorkerRuntime, stops: StopPoints
    ) -> None:
        self.rq = rq
        self.leases = leases
        self.runtime = runtime
        self.stops = stops
        self._lock = threading.Lock()
        self._telling: dict[str, PublicStatus] = {}  # job id -> the end being written

    # -- ends ---------------------------------------------------------------------------------

    def succeeded(self, item: BatchItem, output: dict[str, Any]) -> None:
        """RQ's success handling (``output`` is the job's result), if the job is still ours."""
        if not self.claim(item):
            return
        self.stops.reached("claimed")
        with self._told(item, PublicStatus.SUCCEEDED):
            self.rq.end_succeeded(item.job, item.queue, item.execution, output)

    def failed(self, item: BatchItem, error: BaseException) -> None:
        """RQ's failure handling: a retry while the job has retries (nothing to tell yet),
        else failed for good. Bad input (a 4xx problem) is not retried: it would fail the
        same way every time."""
        if not self.claim(item):
            return
        job = item.job
        if isinstance(error, MegaSRError) and error.status < 500:
            job.retries_left = 0
        retrying = job.should_retry
        store_failure(job, error, retrying)
        self.stops.reached("claimed")
        if retrying:
            self.rq.end_failed(job, item.queue, item.execution, error)
            self.runtime.metrics.jobs_finished.labels(item.engine, "retried").inc()
            return
        with self._told(item, PublicStatus.FAILED):
            self.rq.end_failed(job, item.queue, item.execution, error)

    def stopped(self, item: BatchItem) -> None:
        """An RQ stop-job command: RQ's stopped status, the failed registry, no retry."""
        if not self._still_owned(item):
            return
        with self._told(item, PublicStatus.CANCELED):
            self.rq.end_stopped(item.job, item.queue, item.execution)

    def canceled(self, item: BatchItem) -> None:
        """The gateway canceled the job: no result, status canceled, execution cleared."""
        if not self._still_owned(item):
            return
        with self._told(item, PublicStatus.CANCELED):
            self.rq.end_canceled(item.job, item.execution, _canceled_meta(item.job))

    # -- leaving without an end ---------------------------------------------------------------

    def handed_back(self, item: BatchItem) -> None:
        """Back to the front of its queue without spending a retry (the device failed under
        a batch it did not cause); it runs alone from now on."""
        if not self.claim(item):
            return
        item.job.meta[META_STAGE] = "retrying"
        self.rq.hand_back(item.job, item.queue, item.execution, {ALONE_FIELD: "1"})
        self.runtime.metrics.jobs_finished.labels(item.engine, "retried").inc()

    def let_go(self, item: BatchItem, status: str | None) -> None:
        """RQ gave the job to another worker (our lease lapsed): stop working on it, quietly."""
        if self.end_once(item):
            logger.warning("job %s is %s and no longer ours; dropping it", item.job.id, status)
            self.rq.forget(item.job, item.execution)

    def canceled_before_start(self, job: Job, execution: Execution) -> None:
        """Canceled while it was queued: marked canceled; the gateway told its client."""
        self.rq.end_canceled(job, execution, _canceled_meta(job))

    # -- the fence ----------------------------------------------------------------------------

    def end_once(self, item: BatchItem) -> bool:
        """Take ``item`` out of the batch, once: False when another thread (the watchdog)
        or an earlier step already did."""
        with self._lock:
            if item.done:
                return False
            item.done = True
            return True

    def _still_owned(self, item: BatchItem) -> bool:
        """Take ``item`` out of the batch; True while it still names this worker as its
        owner. A stop or a cancel needs no lease margin (nothing of the job's runs on), and a
        job no longer ours is only let go: its new owner tells the client."""
        if not self.end_once(item):
            return False
        if self.leases.owns(item.job, item.execution):
            return True
        self.rq.forget(item.job, item.execution)
        return False

    def claim(self, item: BatchItem) -> bool:
        """Take ``item`` out of the batch and claim its lease; a job that is no longer ours
        is let go instead."""
        if not self.end_once(item):
            return False
        if self.leases.claim(item.execution):
            return True
        logger.warning("job %s is no longer ours (lease lapsed); dropping it", item.job.id)
        self.rq.forget(item.job, item.execution)
        return False

    # -- the webhook, in the end's transaction ------------------------------------------------

    def queue_webhook(self, job: Job, pipeline: Pipeline) -> None:
        """Called by the RQ adapter inside the transaction that writes ``job``'s end (again
        if RQ retries it): the webhook of the end being written joins it. A webhook that
        cannot be built is logged, and the job still ends."""
        status = self._telling.get(job.id)
        if status is None:
            return
        try:
            self.runtime.notifier.queue_in(pipeline, job, status)
        except Exception:
            logger.exception("cannot queue the webhook of job %s", job.id)

    @contextmanager
    def _told(self, item: BatchItem, status: PublicStatus) -> Iterator[None]:
        """Around the call that writes ``item``'s end at ``status``: its webhook joins the
        transaction; once written, it is counted and sent."""
        self._telling[item.job.id] = status
        try:
            yield
        finally:
            del self._telling[item.job.id]
        self.stops.reached("ended")
        self.runtime.metrics.jobs_finished.labels(item.engine, str(status)).inc()
        with suppress(Exception):  # the outbox holds it: any process delivers it later
            self.runtime.notifier.wake(item.job.connection)


def _canceled_meta(job: Job) -> bytes:
    job.meta[META_STAGE] = "canceled"
    return job.serializer.dumps(job.meta)
