"""Helpers shared by the service tests (fixtures live in conftest.py)."""

from __future__ import annotations

import io
import json
import os
import threading
from pathlib import Path

import httpx
import numpy as np
import uvicorn
from loopback import ChildServer, free_port, wait_until, worker_command
from PIL import Image
from webhook_receiver import LOOPBACK_NETWORKS

from megasr.service import create_app
from megasr.settings import Settings

TESTS = Path(__file__).resolve().parent.parent
API_KEYS = {"key-a": "tenant-a", "key-b": "tenant-b"}
KEY_A = {"Authorization": "Bearer key-a"}
KEY_B = {"X-API-Key": "key-b"}


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


class Gateway:
    """A gateway app served by uvicorn in a thread on a free loopback port."""

    def __init__(self, settings: Settings, access_log: bool = False) -> None:
        """``access_log``: uvicorn logs every request at INFO, through the root logger (so
        pytest's ``caplog`` sees it); otherwise it logs warnings only."""
        self.settings = settings
        self.app = create_app(settings)
        logs = {"log_config": None, "log_level": "info"} if access_log else {}
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=0, **({"log_level": "warning"} | logs)
        )
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

    def queued(self) -> list[str]:
        """Ids of the jobs waiting, in every engine's queue."""
        return [job_id for q in self.app.state.gateway.queues.all() for job_id in q.job_ids]

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
        MEGASR_WEBHOOK_ALLOWED_NETWORKS=json.dumps(LOOPBACK_NETWORKS),
    )
    env.update(extra)
    return env


class WorkerProcess(ChildServer):
    """``megasr worker`` (the real command) in a child process, logging to a file."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        port = free_port()
        super().__init__(worker_command(port), env, port, log)

    def wait_ready(self) -> WorkerProcess:
        super().wait_ready(timeout_s=90)
        return self


def create_bucket(storage) -> None:
    """Make a test's bucket on the moto server (production buckets exist before the service)."""
    storage.client.create_bucket(Bucket=storage.bucket)
