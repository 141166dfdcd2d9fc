"""The whole service: HTTP gateway, Redis queue, a separate ``megasr worker`` process, storage
(local and S3), and ``megasr serve`` starting and stopping (the web page in a browser:
test_web_page.py).

Workers run the tiny real network of :mod:`worker_engines` on the CPU, so a job takes well
under a second; each wait is a poll with a deadline.
"""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from PIL import Image
from service_support import (
    API_KEYS,
    KEY_A,
    Gateway,
    WorkerProcess,
    create_bucket,
    free_port,
    wait_until,
    worker_env,
)
from webhook_receiver import LOOPBACK_NETWORKS, WebhookReceiver

from megasr.client import Client
from megasr.jobs import JobStatus
from megasr.queue import EmbeddedRedis
from megasr.settings import Settings
from megasr.storage import LocalStorage, S3Storage

S3_KEYS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}
SECRET = "e2e-webhook-secret"
WEBHOOKS = {"webhook_secret": SECRET, "webhook_backoff_s": "0.05"}


@dataclass
class Stack:
    redis: EmbeddedRedis
    gateway: Gateway
    worker: WorkerProcess
    settings: Settings
    hold: Path  # while this file exists, the worker's engine calls wait


def start_stack(root: Path, queue: str, **overrides: str) -> Stack:
    """Redis, a worker process and a gateway (auth on) sharing a queue and a storage."""
    redis = EmbeddedRedis(root / "redis").start()
    values = {
        "redis_url": redis.url,
        "data_dir": root / "data",
        "queue_name": queue,
        "api_keys": API_KEYS,
        "webhook_allowed_networks": LOOPBACK_NETWORKS,
        **overrides,
    }
    env_overrides = {f"MEGASR_{k.upper()}": str(v) for k, v in overrides.items()}
    hold = root / "hold"
    env = worker_env(redis.url, root / "data", queue, MEGASR_TEST_HOLD=str(hold), **env_overrides)
    worker = WorkerProcess(env, root / "worker.log")
    gateway = Gateway(Settings(**values)).start()
    worker.wait_ready()
    return Stack(redis, gateway, worker, Settings(**values), hold)


def stop_stack(stack: Stack) -> None:
    stack.gateway.stop()
    stack.worker.stop()
    stack.redis.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    stack = start_stack(tmp_path_factory.mktemp("stack"), "e2e", **WEBHOOKS)
    yield stack
    stop_stack(stack)


@pytest.fixture(scope="module")
def s3_stack(tmp_path_factory, s3_endpoint) -> Iterator[Stack]:
    os.environ.update(S3_KEYS)  # boto3 in this process (the gateway) reads them too
    settings = {
        "storage_backend": "s3",
        "s3_bucket": "megasr-e2e",
        "s3_endpoint_url": s3_endpoint,
        "s3_public_endpoint_url": s3_endpoint,
    }
    create_bucket(S3Storage(bucket="megasr-e2e", endpoint_url=s3_endpoint))
    stack = start_stack(tmp_path_factory.mktemp("s3-stack"), "e2e-s3", **settings)
    yield stack
    stop_stack(stack)


def image_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        return image.size


def test_a_photo_goes_through_queue_and_worker(stack, photo):
    seen: list[JobStatus] = []
    with Client(stack.gateway.url, api_key="key-a") as client:
        job = client.submit(photo, scale=2)
        done = client.wait(job.id, on_progress=lambda view: seen.append(view.status), timeout_s=60)
        result = client.download(job.id)

    assert done.status is JobStatus.SUCCEEDED
    assert seen[-1] is JobStatus.SUCCEEDED
    assert done.output.width == 192 and done.output.height == 128
    assert done.output.url == f"/v1/jobs/{job.id}/result"
    assert done.progress == 1.0
    assert done.started_at is not None and done.finished_at >= done.started_at
    assert image_size(result) == (192, 128)
    assert len(result) == done.output.bytes

    response = stack.gateway.http.get(done.output.url, headers=KEY_A)
    assert response.headers["content-type"] == "image/png"
    assert response.content == result


def test_a_width_target_keeps_the_aspect_ratio(stack, photo):
    with Client(stack.gateway.url, api_key="key-a") as client:
        result = client.upscale(photo, width=150, output_format="jpeg")
    assert image_size(result) == (150, 100)
    assert result[:3] == b"\xff\xd8\xff"


def test_the_client_command_writes_the_result(stack, photo, tmp_path):
    source = tmp_path / "cup.png"
    source.write_bytes(photo)
    command = [sys.executable, "-m", "megasr.cli.main", "client", "upscale", str(source)]
    command += ["--url", stack.gateway.url, "--api-key", "key-a", "--scale", "2"]
    command += ["--format", "webp", "-o", str(tmp_path)]

    result = subprocess.run(command, capture_output=True, text=True, timeout=120)

    assert result.returncode == 0, result.stderr
    assert "succeeded" in result.stderr
    assert image_size((tmp_path / "cup-megasr.webp").read_bytes()) == (192, 128)


def test_the_client_command_sends_the_diffusion_options(stack, photo, tmp_path):
    source = tmp_path / "cup.png"
    source.write_bytes(photo)
    command = [sys.executable, "-m", "megasr.cli.main", "client", "upscale", str(source)]
    command += ["--url", stack.gateway.url, "--api-key", "key-a", "-o", str(tmp_path)]
    command += ["--prompt", "a cup", "--negative-prompt", "blur", "--steps", "3"]
    command += ["--guidance-scale", "2.5", "--seed", "7", "--color-fix", "wavelet"]

    result = subprocess.run(command, capture_output=True, text=True, timeout=120)

    assert result.returncode == 0, result.stderr
    job_id = re.search(r"^job (\S+)$", result.stderr, re.MULTILINE).group(1)
    with Client(stack.gateway.url, api_key="key-a") as client:
        params = client.get(job_id).params
    assert {name: params[name] for name in ("prompt", "negative_prompt", "color_fix")} == {
        "prompt": "a cup",
        "negative_prompt": "blur",
        "color_fix": "wavelet",
    }
    assert (params["steps"], params["guidance_scale"], params["seed"]) == (3, 2.5, 7)


def test_results_come_from_s3_by_presigned_redirect(s3_stack, s3_endpoint, photo):
    with Client(s3_stack.gateway.url, api_key="key-a") as client:
        job = client.submit(photo, scale=2)
        client.wait(job.id, timeout_s=60)
        redirect = s3_stack.gateway.http.get(f"/v1/jobs/{job.id}/result", headers=KEY_A)
        result = client.download(job.id)

    assert redirect.status_code == 307
    location = redirect.headers["location"]
    assert location.startswith(f"{s3_endpoint}/megasr-e2e/outputs/{job.id}/output.png?")
    assert "X-Amz-Signature=" in location
    assert image_size(result) == (192, 128)
    stored = S3Storage(bucket="megasr-e2e", endpoint_url=s3_endpoint)
    assert stored.exists(f"inputs/{job.id}/input.png")


def test_cancel_a_running_job(stack, photo):
    stack.hold.touch()  # the engine call will wait: the job stays running
    try:
        with Client(stack.gateway.url, api_key="key-a") as client:
            job = client.submit(photo, scale=2)
            wait_until(lambda: client.get(job.id).status is JobStatus.RUNNING, "running")
            canceled = client.cancel(job.id)
            stack.hold.unlink()
            # One worker, one batch at a time: once a later job is done, so is the canceled one.
            later = client.submit(photo, scale=2)
            client.wait(later.id, timeout_s=60)
            final = client.get(job.id)
    finally:
        stack.hold.unlink(missing_ok=True)

    assert canceled.status is JobStatus.CANCELED
    assert final.status is JobStatus.CANCELED
    assert final.output is None
    storage = LocalStorage(stack.settings.data_dir / "objects")
    assert not storage.exists(f"outputs/{job.id}/output.png")
    assert storage.exists(f"outputs/{later.id}/output.png")


def test_a_job_canceled_in_the_queue_gets_its_webhook_from_the_gateway(stack, photo):
    receiver = WebhookReceiver()
    stack.hold.touch()  # the worker holds its first job: the next one stays queued
    try:
        with Client(stack.gateway.url, api_key="key-a") as client:
            running = client.submit(photo, scale=2)
            wait_until(lambda: client.get(running.id).status is JobStatus.RUNNING, "running")
            queued = client.submit(photo, scale=2, webhook_url=receiver.url)
            assert client.get(queued.id).status is JobStatus.QUEUED
            client.cancel(queued.id)
            wait_until(lambda: receiver.deliveries, "the webhook")
            stack.hold.unlink()
            client.wait(running.id, timeout_s=60)
    finally:
        stack.hold.unlink(missing_ok=True)
        receiver.close()

    ((headers, _),) = receiver.deliveries
    assert headers["x-megasr-event"] == "job.canceled"
    view = receiver.bodies(SECRET)[queued.id]
    assert view["status"] == "canceled" and view["output"] is None and view["error"] is None
    assert view["params"]["webhook_url"] == receiver.url
    assert receiver.attempts == {queued.id: 2}  # 503 first, then retried


def test_a_job_abandoned_on_its_last_try_fails_with_a_webhook_from_the_gateway(tmp_path, photo):
    """The worker is SIGKILLed holding a job with no retries left and no other worker runs:
    the gateway's registry cleanup fails the job and sends its webhook."""
    knobs = {"max_retries": "0", "heartbeat_interval_s": "0.5", "heartbeat_ttl_s": "2"}
    stack = start_stack(tmp_path, "e2e-abandon", maintenance_interval_s="0.5", **knobs, **WEBHOOKS)
    receiver = WebhookReceiver()
    stack.hold.touch()
    try:
        with Client(stack.gateway.url, api_key="key-a") as client:
            job = client.submit(photo, scale=2, webhook_url=receiver.url)
            wait_until(lambda: client.get(job.id).status is JobStatus.RUNNING, "running")
            stack.worker.process.kill()
            wait_until(lambda: receiver.deliveries, "the webhook", timeout_s=30)
            final = client.get(job.id)
    finally:
        receiver.close()
        stop_stack(stack)

    ((headers, _),) = receiver.deliveries
    assert headers["x-megasr-event"] == "job.failed"
    view = receiver.bodies(SECRET)[job.id]
    assert view["status"] == "failed" and view["error"]["type"].endswith("job-failed")
    assert final.status is JobStatus.FAILED
    assert final.error == view["error"]


def test_megasr_serve_starts_and_stops_cleanly(tmp_path, photo):
    env = worker_env("unused", tmp_path / "data", "megasr")
    del env["MEGASR_REDIS_URL"]  # local mode starts its own
    output = tmp_path / "serve.log"
    command = [sys.executable, "-m", "megasr.cli.main", "serve", "--port", "0"]
    command += ["--worker-port", str(free_port()), "--data-dir", str(tmp_path / "data")]
    with output.open("wb") as log:
        serve = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(
            lambda: "running at" in output.read_text() or serve.poll() is not None, "the URL"
        )
        url = re.search(r"running at (http://\S+)", output.read_text()).group(1)
        children = psutil.Process(serve.pid).children(recursive=True)
        names = sorted(child.name() for child in children)
        with Client(url) as client:  # auth is off in local mode
            job = client.submit(photo, scale=2)
            client.wait(job.id, timeout_s=90)
            result = client.download(job.id)
        serve.send_signal(signal.SIGINT)
        status = serve.wait(60)
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait()

    assert image_size(result) == (192, 128)
    assert status == 0, output.read_text()
    assert any("redis-server" in name for name in names), names
    assert len(children) >= 2  # Redis and the worker
    assert [child.pid for child in children if child.is_running()] == []
    assert (tmp_path / "data" / "redis" / "dump.rdb").exists()  # Redis saved on its way out
