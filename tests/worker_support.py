"""The worker's test harness: one real Redis, one storage folder, real ``megasr worker``
processes running the tiny engines of :mod:`worker_engines`, and jobs enqueued the way the
gateway enqueues them. Every wait is a poll with a deadline (:func:`wait_for`); a hold file
makes a worker's engine calls wait, so a test decides when a batch in hand may go on."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from loopback import free_port
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from rq import Queue
from rq.job import Job, JobStatus
from webhook_receiver import LOOPBACK_NETWORKS

from megasr.embedded_redis import EmbeddedRedis
from megasr.jobs import TASK_FUNC, JobPayload, UpscaleParams, new_job_id
from megasr.queue import (
    JOB_SERIALIZER,
    EngineQueues,
    enqueue_upscale,
    get_queue,
    redis_connection,
    upscale_job_options,
)
from megasr.settings import Settings
from megasr.storage import LocalStorage, input_key

TESTS = Path(__file__).resolve().parent
ENGINES = [
    "worker_engines:TinyEngine",
    "worker_engines:OutOfMemoryEngine",
    "worker_engines:OverflowEngine",
    "worker_engines:SelfHealingOverflowEngine",
    "worker_engines:PickyEngine",
]
SECRET = "test-webhook-secret"
DEADLINE_S = 30.0


def wait_for(predicate: Callable[[], object], what: str, timeout_s: float = DEADLINE_S):
    """Poll ``predicate`` until it returns something true; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def http_get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)


class Cluster:
    """One Redis, one storage folder, and helpers to enqueue jobs as the gateway does."""

    def __init__(self, root: Path, redis: EmbeddedRedis) -> None:
        self.root = root
        self.redis_url = redis.url
        self.data_dir = root / "data"
        self.connection = redis_connection(Settings(redis_url=redis.url))
        self.storage = LocalStorage(self.data_dir / "objects")

    def env(self, queue: str, hold: Path) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            PYTHONPATH=os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")]),
            MEGASR_REDIS_URL=self.redis_url,
            MEGASR_DATA_DIR=str(self.data_dir),
            MEGASR_QUEUE_NAME=queue,
            MEGASR_WORKER_ENGINES=json.dumps(ENGINES),
            MEGASR_DEVICE="cpu",
            MEGASR_MAX_WAIT_MS="100",
            MEGASR_MAX_BATCH_TILES="8",
            MEGASR_HEARTBEAT_INTERVAL_S="0.5",
            MEGASR_HEARTBEAT_TTL_S="3",
            MEGASR_WORKER_TTL_S="16",  # RQ polls the queue every worker_ttl - 15 = 1 s
            MEGASR_WORKER_MAINTENANCE_INTERVAL_S="1",
            MEGASR_WEBHOOK_SECRET=SECRET,
            MEGASR_WEBHOOK_BACKOFF_S="0.05",
            MEGASR_WEBHOOK_ALLOWED_NETWORKS=json.dumps(LOOPBACK_NETWORKS),
            MEGASR_TEST_HOLD=str(hold),
            MEGASR_CPU_THREADS="1",  # several workers share the machine's cores
        )
        return env

    def settings(self, queue: str, **overrides: object) -> Settings:
        return Settings(
            redis_url=self.redis_url, data_dir=self.data_dir, queue_name=queue, **overrides
        )

    def queue(self, name: str, engine: str = "tiny") -> Queue:
        return get_queue(self.settings(name), engine, self.connection)

    def payload(self, pixels: np.ndarray, **params: object) -> JobPayload:
        """Store ``pixels`` as a PNG input and build the job's payload."""
        job_id = new_job_id()
        key = input_key(job_id, "png")
        self.storage.put(key, png_bytes(pixels), "image/png")
        height, width = pixels.shape[:2]
        fields = {"engine": "tiny", "output_format": "png", **params}
        return {
            "job_id": job_id,
            "tenant": "test",
            "engine": fields["engine"],
            "params": UpscaleParams.parse(fields).model_dump(mode="json"),
            "input_key": key,
            "input": {"width": width, "height": height, "format": "png"},
            "created_at": "2025-01-01T00:00:00+00:00",
        }

    def submit(self, queue: str, payloads: list[JobPayload], **settings: object) -> list[Job]:
        """Enqueue in one transaction (on each payload's engine queue), so one worker finds
        them all waiting together (``settings`` override the job options)."""
        settings = self.settings(queue, **settings)
        jobs: dict[str, Job] = {}
        with self.connection.pipeline() as pipeline:
            for engine in dict.fromkeys(p["engine"] for p in payloads):
                datas = [
                    Queue.prepare_data(TASK_FUNC, **upscale_job_options(p, settings))
                    for p in payloads
                    if p["engine"] == engine
                ]
                for job in self.queue(queue, engine).enqueue_many(datas, pipeline=pipeline):
                    jobs[job.id] = job
            pipeline.execute()
        return [jobs[p["job_id"]] for p in payloads]

    def submit_one(self, queue: str, payload: JobPayload, **settings: object) -> Job:
        """Enqueue with the gateway's own call (``settings`` override its job options)."""
        queues = EngineQueues(self.settings(queue, **settings), self.connection)
        return enqueue_upscale(queues, payload)

    def job(self, job_id: str) -> Job:
        return Job.fetch(job_id, connection=self.connection, serializer=JOB_SERIALIZER)

    def status(self, job_id: str) -> JobStatus:
        return self.job(job_id).get_status()

    def wait_status(self, job_id: str, *statuses: JobStatus) -> Job:
        wait_for(lambda: self.status(job_id) in statuses, f"job {job_id} to be {statuses}")
        return self.job(job_id)

    def output(self, job: Job) -> np.ndarray:
        return decode_png(self.storage.get(job.meta["output"]["key"]))


class WorkerProcess:
    """``megasr worker`` in a child process, with its metrics port."""

    def __init__(
        self,
        cluster: Cluster,
        queue: str,
        name: str,
        burst: bool = False,
        env: dict[str, str] | None = None,
    ) -> None:
        self.hold = cluster.root / f"hold-{name}"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.name = name
        self.log = (cluster.root / f"{name}.log").open("wb")
        command = [sys.executable, "-m", "megasr.cli.main", "worker"]
        command += ["--name", name, "--host", "127.0.0.1", "--port", str(self.port)]
        command += ["--burst"] if burst else []
        self.process = subprocess.Popen(
            command,
            env={**cluster.env(queue, self.hold), **(env or {})},
            stdout=self.log,
            stderr=self.log,
        )

    def wait_ready(self, timeout_s: float = 60) -> WorkerProcess:
        def ready() -> bool:
            if self.process.poll() is not None:
                pytest.fail(f"worker {self.name} exited with {self.process.returncode}")
            try:
                return http_get(self.url + "/readyz")[0] == 200
            except OSError:
                return False

        try:
            wait_for(ready, f"worker {self.name} to be ready", timeout_s=timeout_s)
        except pytest.fail.Exception:
            tail = Path(self.log.name).read_text(errors="replace")[-2000:]
            pytest.fail(f"worker {self.name} not ready in {timeout_s:g} s; its log ends:\n{tail}")
        return self

    def metrics(self) -> dict[tuple[str, tuple], float]:
        status, body = http_get(self.url + "/metrics")
        assert status == 200
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(body.decode())
            for sample in family.samples
        }

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


def value(metrics: dict, name: str, **labels: str) -> float:
    return metrics.get((name, tuple(sorted(labels.items()))), 0.0)
