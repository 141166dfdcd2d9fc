"""Whether the worker process should go on running, for its ``/healthz`` probe.

A worker turns unhealthy for good when its device cannot be trusted any more (an engine call
hung, a sticky CUDA error) or a thread it cannot work without has died; ``/healthz`` then
answers 503, so an orchestrator restarts the pod even if the process itself cannot exit.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

logger = logging.getLogger("megasr.worker.health")

# The worker's exit status when it stops because it is unhealthy (EX_SOFTWARE).
EXIT_UNHEALTHY = 70


class WorkerHealth:
    """The first problem reported sticks; ``checks`` are asked at each probe."""

    def __init__(self) -> None:
        self._problem: str | None = None
        self._lock = threading.Lock()
        self.checks: list[tuple[str, Callable[[], bool]]] = []

    def fail(self, problem: str) -> None:
        with self._lock:
            if self._problem is None:
                self._problem = problem
                logger.error("worker unhealthy: %s", problem)

    @property
    def failed(self) -> bool:
        """Whether a problem was reported (the worker stops for it)."""
        return self._problem is not None

    def problem(self) -> str | None:
        """None while healthy, else why not."""
        if self._problem is not None:
            return self._problem
        for name, ok in self.checks:
            if not ok():
                return f"{name} is not running"
        return None


def running_once_started(thread: threading.Thread) -> Callable[[], bool]:
    """A check for ``checks``: a thread not started yet (engines still loading) is fine, a
    started one must still be alive."""
    return lambda: thread.ident is None or thread.is_alive()
