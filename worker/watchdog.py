"""A watchdog for engine calls that hang.

A device call can hang for good (a wedged GPU, a driver fault, a deadlock in a kernel), and
nothing in the calling thread can interrupt it. The watchdog is a thread of its own: the
worker arms it around each engine call (:meth:`Watchdog.watching`), and the engine's progress
(a tile engine's call returning, an image engine's forward pass or denoising step) feeds it.
Armed with no progress for ``timeout_s``, it calls ``on_stall`` once, from its own thread;
the worker then fails or hands back the jobs in hand, marks itself unhealthy and exits.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

logger = logging.getLogger("megasr.worker.watchdog")


class Watchdog(threading.Thread):
    """Calls ``on_stall(idle_s)`` once when an armed engine call makes no progress."""

    def __init__(self, timeout_s: float, on_stall: Callable[[float], None]) -> None:
        super().__init__(name="megasr-watchdog", daemon=True)
        self.timeout_s = timeout_s
        self.on_stall = on_stall
        self._lock = threading.Lock()
        self._armed = False
        self._last = time.monotonic()
        self._fired = threading.Event()
        self._stopped = threading.Event()

    @property
    def stalled(self) -> bool:
        """True from the moment it fired: the engine in hand is not to be trusted."""
        return self._fired.is_set()

    @contextmanager
    def watching(self) -> Iterator[None]:
        """Arm for the length of one engine call."""
        with self._lock:
            self._armed, self._last = True, time.monotonic()
        try:
            yield
        finally:
            with self._lock:
                self._armed = False

    def progress(self) -> None:
        """The engine did a unit of work."""
        with self._lock:
            self._last = time.monotonic()

    def run(self) -> None:
        poll_s = min(1.0, self.timeout_s / 4)
        while not self._stopped.wait(poll_s):
            with self._lock:
                idle = time.monotonic() - self._last if self._armed else 0.0
            if idle > self.timeout_s and not self._fired.is_set():
                self._fired.set()
                logger.error("engine call made no progress for %.0f s", idle)
                try:
                    self.on_stall(idle)
                except Exception:
                    logger.exception("handling the stalled engine call failed")
                return

    def stop(self) -> None:
        self._stopped.set()
