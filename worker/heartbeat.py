"""Heartbeats for every job in hand, from a thread of their own.

RQ's ``SimpleWorker`` beats only between jobs, and then only for the worker; a batch can run
for minutes. Without beats the started-registry entry of each job expires and RQ's
abandoned-job handling re-queues a job that is still running. This thread refreshes the
worker, each execution's started-registry entry and each job's ``last_heartbeat`` every
``interval_s`` for ``ttl_s``; if the process dies the beats stop and after ``ttl_s`` RQ
recovers the jobs (and retries them).
"""

from __future__ import annotations

import logging
import threading

from redis.exceptions import RedisError
from rq.utils import now
from rq.worker import BaseWorker

logger = logging.getLogger("megasr.worker.heartbeat")


class HeartbeatThread(threading.Thread):
    """Beats for the worker's active executions until :meth:`stop`."""

    def __init__(self, worker: BaseWorker, interval_s: float, ttl_s: int) -> None:
        super().__init__(name="megasr-heartbeat", daemon=True)
        self.worker = worker
        self.interval_s = interval_s
        self.ttl_s = ttl_s
        self._stopped = threading.Event()

    def run(self) -> None:
        while not self._stopped.wait(self.interval_s):
            try:
                self.beat()
            except RedisError as exc:  # Redis away for a moment: beat again next time
                logger.warning("heartbeat failed: %s", exc)

    def beat(self) -> None:
        """One round of heartbeats, if the worker holds any job."""
        # A C-level copy of the dict, safe while the work loop adds and removes entries.
        executions = list(self.worker.executions.values())
        if not executions:
            return
        with self.worker.connection.pipeline() as pipeline:
            self.worker.heartbeat(self.ttl_s + 60, pipeline=pipeline)
            for execution in executions:
                job = execution.job
                execution.heartbeat(job.started_job_registry, self.ttl_s, pipeline=pipeline)
                job.heartbeat(now(), self.ttl_s, pipeline=pipeline, xx=True)
            pipeline.execute()

    def stop(self) -> None:
        self._stopped.set()
        if self.is_alive():
            self.join(timeout=self.interval_s + 5)
