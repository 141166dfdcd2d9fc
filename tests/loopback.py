"""The service's parts as child processes on loopback, for tests and benchmarks.

Whatever needs a real running service (the service tests, ``bench/service_load.py``) starts
each part through its production entry point: ``megasr worker``, or an ASGI app under the
uvicorn command line. Each :class:`ChildServer` listens on a free loopback port; it is ready
when an HTTP probe answers 200 (and a child that exits while starting fails the wait at once,
pointing at its log); :meth:`ChildServer.stop` sends SIGTERM, so a worker finishes the batch
in hand, and kills only after a grace period.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from megasr.errors import ServiceUnavailableError

LOOPBACK = "127.0.0.1"
START_TIMEOUT_S = 30.0
STOP_GRACE_S = 30.0


def free_port(host: str = LOOPBACK) -> int:
    """A port the kernel says is free now (another starter may race for it; rare on loopback)."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def wait_until(
    condition: Callable[[], object], what: str, timeout_s: float = START_TIMEOUT_S
) -> None:
    """Poll ``condition`` until it is true: a start-up wait with a deadline, not a timing."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up waiting for {what} after {timeout_s:g} s")
        time.sleep(0.02)


def service_env(base: dict[str, str], redis_url: str, data_dir: Path, queue: str) -> dict[str, str]:
    """Child settings: one Redis and queue, local storage, auth and every limit off."""
    return {
        **base,
        "MEGASR_REDIS_URL": redis_url,
        "MEGASR_DATA_DIR": str(data_dir),
        "MEGASR_QUEUE_NAME": queue,
        "MEGASR_AUTH_ENABLED": "false",
        "MEGASR_RATE_LIMIT_PER_MINUTE": "0",
        "MEGASR_MAX_JOBS_IN_FLIGHT": "0",
        "MEGASR_MAX_QUEUE_DEPTH": "0",
    }


def worker_command(port: int, *options: str) -> list[str]:
    """``megasr worker`` with its metrics and probe port on loopback ``port``."""
    command = [sys.executable, "-m", "megasr.cli.main", "worker"]
    return [*command, "--host", LOOPBACK, "--port", str(port), *options]


def uvicorn_command(factory: str, port: int, app_dir: Path | None = None) -> list[str]:
    """uvicorn serving ``module:factory`` (called with no arguments) on loopback ``port``.

    Every app started this way runs with the same server settings, so two of them can be
    timed side by side; access logs are off, as a load test would otherwise time the log.
    """
    command = [sys.executable, "-m", "uvicorn", "--factory", factory]
    command += ["--host", LOOPBACK, "--port", str(port), "--log-level", "warning"]
    command += ["--no-access-log"]
    return command + (["--app-dir", str(app_dir)] if app_dir is not None else [])


def gateway_command(port: int) -> list[str]:
    """The gateway app, configured by the ``MEGASR_*`` variables of its environment."""
    return uvicorn_command("megasr.service.app:create_app", port)


class ChildServer:
    """A command serving HTTP on loopback ``port`` in a child process, logging to ``log``."""

    def __init__(
        self,
        command: list[str],
        env: dict[str, str],
        port: int,
        log: Path,
        ready_path: str = "/readyz",
    ) -> None:
        self.port = port
        self.url = f"http://{LOOPBACK}:{port}"
        self.ready_path = ready_path
        self.log_path = log
        self._log = log.open("wb")
        self.process = subprocess.Popen(command, env=env, stdout=self._log, stderr=self._log)

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> ChildServer:
        """Block until ``ready_path`` answers 200; raises if the child exits or time runs out."""

        def ready() -> bool:
            if self.process.poll() is not None:
                raise ServiceUnavailableError(
                    f"child process {self.process.pid} exited with code "
                    f"{self.process.returncode} while starting; see {self.log_path}"
                )
            try:
                return httpx.get(self.url + self.ready_path, timeout=5).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(ready, f"{self.url}{self.ready_path}", timeout_s)
        return self

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """SIGTERM, then SIGKILL if the child is still there after ``grace_s``."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()

    def __enter__(self) -> ChildServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
