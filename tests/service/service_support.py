"""Helpers shared by the service tests (fixtures live in conftest.py)."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import uvicorn
from PIL import Image

from megasr.service import create_app
from megasr.settings import Settings

TESTS = Path(__file__).resolve().parent.parent
API_KEYS = {"key-a": "tenant-a", "key-b": "tenant-b"}
KEY_A = {"Authorization": "Bearer key-a"}
KEY_B = {"X-API-Key": "key-b"}
START_TIMEOUT_S = 30.0


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = START_TIMEOUT_S):
    """Poll ``condition`` (a start-up wait, not a timing assertion)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.02)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Gateway:
    """A gateway app served by uvicorn in a thread on a free loopback port."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.app = create_app(settings)
        config = uvicorn.Config(self.app, host="127.0.0.1", port=0, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> Gateway:
        self.thread.start()
        wait_until(lambda: self.server.started or not self.thread.is_alive(), "the gateway")
        assert self.server.started, "the gateway failed to start"
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.http = httpx.Client(base_url=self.url, timeout=30)
        return self

    def stop(self) -> None:
        self.http.close()
        self.server.should_exit = True
        self.thread.join()

    @property
    def queue(self):
        return self.app.state.gateway.queue

    @property
    def redis(self):
        return self.app.state.gateway.redis


def worker_env(redis_url: str, data_dir: Path, queue: str, **extra: str) -> dict[str, str]:
    """The environment of a ``megasr worker`` child that runs the tiny test engine on the CPU."""
    env = dict(os.environ)
    env.update(
        PYTHONPATH=os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")]),
        MEGASR_REDIS_URL=redis_url,
        MEGASR_DATA_DIR=str(data_dir),
        MEGASR_QUEUE_NAME=queue,
        MEGASR_WORKER_ENGINES=json.dumps(["worker_engines:TinyEngine"]),
        MEGASR_DEVICE="cpu",
        MEGASR_MAX_WAIT_MS="20",
    )
    env.update(extra)
    return env


class WorkerProcess:
    """``megasr worker`` (the real command) in a child process, logging to a file."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.log = log.open("wb")
        command = [sys.executable, "-m", "megasr.cli.main", "worker"]
        command += ["--host", "127.0.0.1", "--port", str(self.port)]
        self.process = subprocess.Popen(command, env=env, stdout=self.log, stderr=self.log)

    def wait_ready(self) -> WorkerProcess:
        def ready() -> bool:
            assert self.process.poll() is None, f"the worker exited; see {self.log.name}"
            try:
                return httpx.get(f"http://127.0.0.1:{self.port}/readyz").status_code == 200
            except httpx.TransportError:
                return False

        wait_until(ready, "the worker to be ready", timeout_s=90)
        return self

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
