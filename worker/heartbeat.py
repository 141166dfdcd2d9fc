"""Heartbeats for every job in hand, from a thread of their own.

RQ's ``SimpleWorker`` beats only between jobs, and then only for the worker; a batch can run
for minutes. Without beats the lease of each job (see :mod:`megasr.worker.lease`) runs out
and RQ's abandoned-job handling re-queues a job that is still running. This thread refreshes
the worker and the lease of each job still its own every ``interval_s``; if the process dies
or freezes, the beats stop and once a lease has run out RQ recovers the job.

It renews nothing while ``renewing()`` is false (an engine call hung: its jobs must be free
to go to another worker), and no error stops it: a failed beat is logged and the next one
tries again, so it cannot die silently and leave leases to lapse under a working batch.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from redis.exceptions import RedisError

from megasr.worker.lease import Leases
from megasr.worker.rq_adapter import RQWorker

logger = logging.getLogger("megasr.worker.heartbeat")


class HeartbeatThread(threading.Thread):
    """Beats for the worker's active executions until :meth:`stop`."""

    def __init__(
        self,
        worker: RQWorker,
        leases: Leases,
        interval_s: float,
        renewing: Callable[[], bool],
    ) -> None:
        super().__init__(name="megasr-heartbeat", daemon=True)
        self.worker = worker
        self.leases = leases
        self.interval_s = interval_s
        self.renewing = renewing
        self._stopped = threading.Event()

    def run(self) -> None:
        while not self._stopped.wait(self.interval_s):
            try:
                self.beat()
            except RedisError as exc:  # Redis away for a moment: beat again next time
                logger.warning("heartbeat failed: %s", exc)
            except Exception:
                logger.exception("heartbeat failed; beating again in %g s", self.interval_s)

    def beat(self) -> None:
        """One round of heartbeats, if the worker holds any job."""
        # A C-level copy of the dict, safe while the work loop adds and removes entries.
        executions = list(self.worker.executions.values())
        if not executions or not self.renewing():
            return
        self.worker.heartbeat(self.leases.ttl_s + 60)
        renewed = self.leases.renew(executions)
        lost = [e.job_id for e, ok in zip(executions, renewed, strict=True) if not ok]
        if lost:
            logger.warning("lease lost, not renewed: %s", ", ".join(lost))

    def stop(self) -> None:
        self._stopped.set()
        if self.is_alive():
            self.join(timeout=self.interval_s + 5)
