"""What ``megasr serve`` tells its user while it starts, loads engines and stops.

A first run on a CPU spends minutes loading (and compiling) engines while the page is
already up and accepting uploads; without a word the user cannot tell waiting from hanging.
Each step is one line on stderr with the seconds since the command began, and the worker's
engines are followed through the announcements the gateway reads too
(:mod:`megasr.engine_status`): loading, ready (with how long it took) or failed (with why).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

from megasr.engine_status import EngineCatalog, EngineState


class ServeLog:
    """Timestamped progress lines: ``megasr [  12.3 s] worker loading realesrgan-x4plus``."""

    def __init__(
        self, stream: TextIO | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._stream = stream
        self._clock = clock
        self.started = clock()

    def elapsed(self) -> float:
        return self._clock() - self.started

    def say(self, message: str) -> None:
        stream = self._stream or sys.stderr
        print(f"megasr [{self.elapsed():6.1f} s] {message}", file=stream, flush=True)


class EngineWatch:
    """Says each change of the engines' states, from successive catalogs."""

    def __init__(self, log: ServeLog) -> None:
        self._log = log
        self._seen: dict[str, tuple[EngineState, str | None]] = {}
        self._loading_since: dict[str, float] = {}
        self._all_ready = False

    def update(self, catalog: EngineCatalog) -> None:
        for info in catalog.engines:
            state = (info.state, info.detail)
            if self._seen.get(info.name) != state:
                self._seen[info.name] = state
                self._report(info.name, info.state, info.detail)
        ready = bool(catalog.engines) and all(
            info.state is EngineState.READY for info in catalog.engines
        )
        if ready and not self._all_ready:
            self._log.say("ready: queued and new uploads run now")
        self._all_ready = ready

    def _report(self, name: str, state: EngineState, detail: str | None) -> None:
        suffix = f": {detail}" if detail else ""
        if state is EngineState.LOADING:
            self._loading_since.setdefault(name, self._log.elapsed())
            self._log.say(f"worker loading {name}{suffix} (uploads are queued meanwhile)")
        elif state is EngineState.READY:
            since = self._loading_since.pop(name, None)
            took = "" if since is None else f", loaded in {self._log.elapsed() - since:.1f} s"
            self._log.say(f"worker ready with {name}{took}")
        else:
            self._log.say(f"worker failed to load {name}{suffix}")
