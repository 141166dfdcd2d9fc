"""Whether the worker process should go on running, and whether it takes work, for its probes.

A worker turns unhealthy for good when its device cannot be trusted any more (an engine call
hung, a sticky CUDA error) or a thread it cannot work without has died; ``/healthz`` then
answers 503, so an orchestrator restarts the pod even if the process itself cannot exit.

A worker that drains (SIGTERM: it finishes the batch in hand, then exits) stays live, since a
liveness probe failing meanwhile would kill the batch it is finishing, but is no longer
ready: ``/readyz`` answers 503 ``draining`` at once. Once it stops taking work for good
(drained, or failed) both probes answer 503 for ``worker_exit_linger_s`` before the process
exits (:func:`linger`): long enough for a probe to see it, where an exit a few milliseconds
after the 503 would show a probe nothing but a refused connection.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable

logger = logging.getLogger("megasr.worker.health")

# The worker's exit status when it stops because it is unhealthy (EX_SOFTWARE).
EXIT_UNHEALTHY = 70


class WorkerHealth:
    """The first problem reported sticks; ``checks`` are asked at each probe."""

    def __init__(self) -> None:
        self._problem: str | None = None
        self._draining = False
        self._exiting = False
        self._lock = threading.Lock()
        self.checks: list[tuple[str, Callable[[], bool]]] = []

    def fail(self, problem: str) -> None:
        with self._lock:
            if self._problem is None:
                self._problem = problem
                logger.error("worker unhealthy: %s", problem)

    def drain(self) -> None:
        """A warm shutdown began: ready no more, still live while the batch finishes."""
        self._draining = True

    def exit(self) -> None:
        """The worker takes no more work and exits soon: neither live nor ready."""
        self._exiting = True

    @property
    def failed(self) -> bool:
        """Whether a problem was reported (the worker stops for it)."""
        return self._problem is not None

    @property
    def exiting(self) -> bool:
        return self._exiting

    def problem(self) -> str | None:
        """For ``/healthz``: None while the worker should go on running, else why not."""
        if self._problem is not None:
            return self._problem
        if self._exiting:
            return "the worker stopped taking jobs and is exiting"
        for name, ok in self.checks:
            if not ok():
                return f"{name} is not running"
        return None

    def readiness(self, engines_ready: bool) -> str:
        """For ``/readyz``: ``ready``, or why not (``loading``, ``draining``, ``exiting``,
        ``unhealthy``)."""
        if self._exiting:
            return "exiting"
        if self.problem() is not None:
            return "unhealthy"
        if self._draining:
            return "draining"
        return "ready" if engines_ready else "loading"


def running_once_started(thread: threading.Thread) -> Callable[[], bool]:
    """A check for ``checks``: a thread not started yet (engines still loading) is fine, a
    started one must still be alive."""
    return lambda: thread.ident is None or thread.is_alive()


class _Interrupted(Exception):
    """A signal ended the linger."""


def _interrupt(signum: int, frame: object) -> None:
    raise _Interrupted


def linger(health: WorkerHealth, seconds: float, interruptible: bool = True) -> None:
    """Answer 503 on both probes for ``seconds`` before the process exits (the status server
    runs on in its own thread). A probe that starts within the window sees the 503, so a
    window of the readiness probe's period plus its timeout is seen by at least one probe.
    From the main thread (``interruptible``), a SIGTERM or SIGINT ends the wait at once."""
    if seconds <= 0 or not interruptible:
        health.exit()
        if seconds > 0:
            logger.info("answering 503 on /healthz and /readyz for %g s before exiting", seconds)
            time.sleep(seconds)
        return
    signals = (signal.SIGTERM, signal.SIGINT)
    previous = {sig: signal.signal(sig, _interrupt) for sig in signals}  # before the 503s
    try:
        health.exit()
        logger.info("answering 503 on /healthz and /readyz for %g s before exiting", seconds)
        time.sleep(seconds)
    except _Interrupted:
        logger.info("signalled: exiting now")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
