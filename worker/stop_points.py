"""A test hook, not a feature: named points of a job's end where a worker stops itself.

``tests/test_worker_faults.py`` kills a worker at each point between an engine call's
return and the job's end being written, and needs the kill to land exactly there. With
``MEGASR_TEST_STOP_AT`` naming a point, a job that reaches it makes the worker send itself
SIGSTOP: every thread halts at once (the heartbeat and the webhook sender too, so
nothing moves on behind the test's back), and the test, seeing the process stopped, kills
it with SIGKILL. No sleep and no timing guess decides where the worker dies.

Unset, which is the default and how every deployment runs, :meth:`StopPoints.reached` does
nothing. The points, in the order a job meets them:

- ``engine-returned``: the engine call returned its outputs, none handed to a job yet;
- ``result-stored``: the job's output object is in storage, its end not yet claimed;
- ``claimed``: the lease claim succeeded, the end is not written;
- ``ended``: the terminal status, the result and the webhook's outbox entry are written,
  the webhook not yet sent.
"""

from __future__ import annotations

import logging
import os
import signal

logger = logging.getLogger("megasr.worker.stop_points")


class StopPoints:
    """Stops this process at ``point`` (None: never)."""

    def __init__(self, point: str | None) -> None:
        self.point = point

    def reached(self, point: str) -> None:
        if point != self.point:
            return
        logger.warning("test stop point %r reached: stopping (SIGSTOP)", point)
        os.kill(os.getpid(), signal.SIGSTOP)
