"""Between engine calls, and between an image engine's denoising steps: which jobs of the
batch must not go on.

A job is looked at before each engine call that would include it (and before each step of
its image): canceled by the gateway (its cancel key, see :mod:`megasr.cancellation`, or RQ's
canceled status) drops it and marks it canceled; an RQ stop-job command stops it (RQ
delivers the command only for the one job it thinks is current, so the adapter hands every
one here); a job past its timeout fails; one that is no longer this worker's (its lease
lapsed) is let go. Each check is one Redis round trip for the whole group.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable

from rq.executions import Execution
from rq.job import Job
from rq.timeouts import JobTimeoutException
from rq.utils import now

from megasr.worker.batch_items import BatchItem
from megasr.worker.job_endings import JobEndings
from megasr.worker.lease import JobState, Leases

logger = logging.getLogger("megasr.worker.interrupts")


class Interrupts:
    """Ends the jobs that must not go on; collects stop-job commands from RQ's thread."""

    def __init__(
        self,
        leases: Leases,
        endings: JobEndings,
        executions: Callable[[], Iterable[Execution]],
    ) -> None:
        self.leases = leases
        self.endings = endings
        self.executions = executions  # the worker's executions now (for stop commands)
        self._stop_job_ids: set[str] = set()
        self._lock = threading.Lock()

    def checkpoint(self, group: list[BatchItem]) -> None:
        """Before the next engine call of ``group``: end whichever of its jobs must not go on."""
        alive = [item for item in group if not item.done]
        states = self.leases.states([(item.job, item.execution) for item in alive])
        for item, state in zip(alive, states, strict=True):
            self.interrupt(item, state)

    def should_stop(self, item: BatchItem) -> Callable[[], bool]:
        """Asked by an image engine before each step of ``item``'s image: ends the job here
        (and says so) if it must not go on."""
        return lambda: item.done or self.interrupt(item)

    def interrupt(self, item: BatchItem, state: JobState | None = None) -> bool:
        """End ``item`` here if it must not go on; True when it was ended."""
        if state is None:
            state = self.leases.state(item.job, item.execution)
        if state.canceled:
            self.endings.canceled(item)
        elif self._take_stop_request(item.job.id):
            self.endings.stopped(item)
        elif not state.owned:
            self.endings.let_go(item, state.status)
        elif _timed_out(item.job):
            timeout = item.job.timeout
            error = JobTimeoutException(f"job exceeded its timeout of {timeout} s")
            self.endings.failed(item, error)
        else:
            return False
        return True

    def request_stop(self, job_id: str) -> None:
        """From RQ's command thread: stop ``job_id`` at its next checkpoint if it is ours."""
        if job_id not in {execution.job_id for execution in list(self.executions())}:
            logger.warning("not working on job %s; stop command ignored", job_id)
            return
        with self._lock:
            self._stop_job_ids.add(job_id)

    def _take_stop_request(self, job_id: str) -> bool:
        with self._lock:
            if job_id in self._stop_job_ids:
                self._stop_job_ids.discard(job_id)
                return True
            return False


def _timed_out(job: Job) -> bool:
    if not job.timeout or job.timeout < 0 or job.started_at is None:
        return False
    return (now() - job.started_at).total_seconds() > job.timeout
