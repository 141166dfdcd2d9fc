"""The worker, end to end: a real Redis server, real ``megasr worker`` processes, real images.

Jobs are enqueued the way the gateway enqueues them (payload in, input in storage). Workers
run tiny real networks from :mod:`worker_engines`; a "hold" file makes their engine calls wait,
so a test decides when a batch in hand may go on, without sleeps. Every wait is a poll with a
deadline. The heartbeat and maintenance knobs are short, so a SIGKILLed worker's job is
recovered by RQ within seconds.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from megasr_tiny import one_thread
from rq import SimpleWorker
from rq.command import send_stop_job_command
from rq.job import JobStatus
from rq.registry import clean_registries
from rq.utils import now
from webhook_receiver import WebhookReceiver
from worker_support import (
    DEADLINE_S,
    ENGINES,
    SECRET,
    TESTS,
    Cluster,
    WorkerProcess,
    http_get,
    png_bytes,
    value,
    wait_for,
)

from megasr.cancellation import request_cancel
from megasr.embedded_redis import EmbeddedRedis
from megasr.engine_status import EngineState, read_engines
from megasr.jobs import JobPayload, new_job_id
from megasr.model.megasr.checkpoint import init_tiny_checkpoint
from megasr.queue import JOB_SERIALIZER
from megasr.settings import get_settings
from megasr.worker import runtime as worker_runtime

WORKER_METRICS = (  # as exposed: counters carry their _total
    "megasr_job_stage_duration_seconds",
    "megasr_job_queue_wait_seconds",
    "megasr_batch_size_tiles",
    "megasr_tiles_processed_total",
    "megasr_input_megapixels_total",
    "megasr_output_megapixels_total",
    "megasr_oom_retries_total",
    "megasr_nan_retries_total",
    "megasr_engine_loaded",
    "megasr_worker_busy",
    "megasr_storage_retries_total",
    "megasr_device_memory_allocated_bytes",
    "megasr_device_memory_reserved_bytes",
    "megasr_jobs_finished_total",
)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("worker")
    with EmbeddedRedis(root / "redis") as redis:
        yield Cluster(root, redis)


@pytest.fixture(scope="module")
def worker(cluster: Cluster) -> Iterator[WorkerProcess]:
    """The worker most tests share, on the queue "shared"."""
    process = WorkerProcess(cluster, "shared", "shared-worker")
    try:
        yield process.wait_ready()
    finally:
        process.stop()


@pytest.fixture(scope="module")
def photo(coffee: np.ndarray) -> np.ndarray:
    return coffee[150:190, 250:298]  # 48 x 40: four 32-pixel tiles with their overlap


@pytest.fixture
def hold(worker: WorkerProcess) -> Iterator[Path]:
    """While this file exists, the shared worker's engine calls wait."""
    worker.hold.touch()
    yield worker.hold
    worker.hold.unlink(missing_ok=True)


# -- the shared worker ------------------------------------------------------------------------


def test_probes_and_metrics_port(cluster: Cluster, worker: WorkerProcess) -> None:
    assert http_get(worker.url + "/healthz") == (200, b'{"status": "ok"}')
    assert http_get(worker.url + "/readyz") == (200, b'{"status": "ready"}')
    loaded = 'megasr_engine_loaded{engine="tiny"} 1.0'

    def exposition_with_engine_loaded() -> str:
        """The gauge is set a moment after the engines report ready (/readyz turns 200)."""
        text = http_get(worker.url + "/metrics")[1].decode()
        return text if loaded in text else ""

    text = wait_for(exposition_with_engine_loaded, "the engine-loaded gauge")
    for name in WORKER_METRICS:
        assert f"# TYPE {name} " in text, name
    assert "job_id" not in text
    # The worker announces its engines for the gateway's GET /v1/engines.
    catalog = read_engines(cluster.connection)
    tiny = next(info for info in catalog.engines if info.name == "tiny")
    assert tiny.state == EngineState.READY and tiny.workers >= 1


def test_end_to_end_output_has_requested_size(cluster: Cluster, worker, photo) -> None:
    by_scale = cluster.payload(photo, scale=2.5)
    by_width = cluster.payload(photo, width=100)
    jobs = [cluster.submit_one("shared", p) for p in (by_scale, by_width)]

    done = [cluster.wait_status(job.id, JobStatus.FINISHED) for job in jobs]

    assert cluster.output(done[0]).shape == (100, 120, 3)
    assert cluster.output(done[1]).shape == (83, 100, 3)  # 40 * 100 / 48, rounded
    for job in done:
        meta = job.meta
        assert meta["progress"] == 1.0 and meta["stage"] == "done"
        assert set(meta["timings"]) == {"decode", "preprocess", "inference", "encode", "upload"}
        assert job.return_value() == meta["output"]
        assert meta["output"]["bytes"] == len(cluster.storage.get(meta["output"]["key"]))


def run_alone_with_plain_rq(
    cluster: Cluster,
    payloads: list[JobPayload],
    monkeypatch: pytest.MonkeyPatch,
    env: dict[str, str] | None = None,
) -> list[np.ndarray]:
    """Copies of the jobs, one at a time, through the plain RQ task in this process
    (``env``: settings of the worker whose results they are compared with)."""
    monkeypatch.setenv("MEGASR_REDIS_URL", cluster.redis_url)
    monkeypatch.setenv("MEGASR_DATA_DIR", str(cluster.data_dir))
    monkeypatch.setenv("MEGASR_WORKER_ENGINES", json.dumps(ENGINES[:1]))
    monkeypatch.setenv("MEGASR_DEVICE", "cpu")
    for name, setting in (env or {}).items():
        monkeypatch.setenv(name, setting)
    monkeypatch.syspath_prepend(str(TESTS))
    monkeypatch.setattr(worker_runtime, "_runtime", None)
    monkeypatch.setattr(SimpleWorker, "_install_signal_handlers", lambda self: None)
    get_settings.cache_clear()
    try:
        jobs = [cluster.submit_one("alone", {**p, "job_id": new_job_id()}) for p in payloads]
        queues = [cluster.queue("alone", e) for e in dict.fromkeys(p["engine"] for p in payloads)]
        SimpleWorker(queues, connection=cluster.connection, serializer=JOB_SERIALIZER).work(
            burst=True
        )
    finally:
        get_settings.cache_clear()
    return [cluster.output(cluster.wait_status(job.id, JobStatus.FINISHED)) for job in jobs]


def test_batched_jobs_share_engine_calls_and_equal_jobs_run_alone(
    cluster: Cluster, worker, coffee: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    corners = ((0, 0), (100, 200), (200, 300), (300, 450))
    # One tile each; diffusion fields that differ do not split an engine that takes none.
    payloads = [
        cluster.payload(coffee[y : y + 24, x : x + 30], steps=1 + i, prompt=f"p{i}", seed=i)
        for i, (y, x) in enumerate(corners)
    ]
    before = worker.metrics()

    jobs = cluster.submit("shared", payloads)
    batched = [cluster.output(cluster.wait_status(j.id, JobStatus.FINISHED)) for j in jobs]

    after = worker.metrics()
    count, total = "megasr_batch_size_tiles_count", "megasr_batch_size_tiles_sum"
    assert value(after, total) - value(before, total) == len(jobs)
    assert value(after, count) - value(before, count) < len(jobs)  # engine calls
    alone = run_alone_with_plain_rq(cluster, payloads, monkeypatch)
    for batched_output, alone_output in zip(batched, alone, strict=True):
        assert np.abs(batched_output - alone_output).max() <= 1


def test_bad_input_fails_alone_and_webhooks_are_signed(cluster: Cluster, worker, photo) -> None:
    receiver = WebhookReceiver()
    try:
        good = cluster.payload(photo, webhook_url=receiver.url)
        bad = cluster.payload(photo, webhook_url=receiver.url)
        cluster.storage.put(bad["input_key"], png_bytes(photo)[:300], "image/png")  # truncated
        mate = cluster.payload(photo[:24, :30])
        jobs = cluster.submit("shared", [good, bad, mate])

        failed = cluster.wait_status(bad["job_id"], JobStatus.FAILED)
        for job in (jobs[0], jobs[2]):
            cluster.wait_status(job.id, JobStatus.FINISHED)
        wait_for(lambda: len(receiver.deliveries) == 2, "both webhooks")
    finally:
        receiver.close()

    assert failed.meta["error"]["status"] == 400
    assert failed.meta["error"]["type"].endswith("invalid-image")
    assert len(failed.results()) == 1  # bad input is not retried
    assert not cluster.storage.exists(f"outputs/{bad['job_id']}/output.png")
    bodies = receiver.bodies(SECRET)
    assert receiver.attempts == {good["job_id"]: 2, bad["job_id"]: 2}  # 503 first, then retried
    assert bodies[good["job_id"]]["status"] == "succeeded"
    assert bodies[good["job_id"]]["output"]["width"] == 4 * 48
    assert bodies[bad["job_id"]]["status"] == "failed"
    assert bodies[bad["job_id"]]["error"]["status"] == 400


def test_engine_failure_in_a_shared_call_fails_only_its_job(cluster: Cluster, worker, photo):
    white = np.full_like(photo, 255)
    failing, fine = cluster.submit(
        "shared", [cluster.payload(p, engine="tiny-picky") for p in (white, photo)]
    )

    assert cluster.wait_status(fine.id, JobStatus.FINISHED).meta["output"]
    failed = cluster.wait_status(failing.id, JobStatus.FAILED)
    assert failed.meta["error"]["status"] == 500
    assert failed.retries_left == 0  # a worker-side error is retried until retries run out


def test_job_past_its_timeout_fails(cluster: Cluster, worker, photo, hold: Path) -> None:
    slow = cluster.payload(photo[:24, :30])
    job = cluster.submit_one("shared", slow, job_timeout_s=1, max_retries=0)
    started = cluster.wait_status(job.id, JobStatus.STARTED).started_at

    wait_for(lambda: (now() - started).total_seconds() > 1.5, "the job's timeout to pass")
    hold.unlink()

    failed = cluster.wait_status(job.id, JobStatus.FAILED)
    assert "timeout" in failed.meta["error"]["detail"]
    assert not cluster.storage.exists(f"outputs/{job.id}/output.png")


def test_cancel_and_stop_running_jobs(cluster: Cluster, worker, photo, hold: Path) -> None:
    # 4 + 3 + 4 tiles: the first engine call takes 8 of them, the canceled job's last 3 wait
    # for a second call (so its cancel is seen between calls, the stop before storing).
    kept, stopped, canceled = cluster.submit(
        "shared", [cluster.payload(photo), cluster.payload(photo[:24, :64]), cluster.payload(photo)]
    )
    for job in (kept, stopped, canceled):
        cluster.wait_status(job.id, JobStatus.STARTED)
    before = worker.metrics()
    assert value(before, "megasr_worker_busy") == 1

    request_cancel(cluster.connection, canceled.id, ttl_s=600)  # what the gateway's DELETE does
    send_stop_job_command(cluster.connection, stopped.id, serializer=JOB_SERIALIZER)
    hold.unlink()  # the first engine call may now finish

    assert cluster.wait_status(kept.id, JobStatus.FINISHED).meta["output"]
    assert cluster.wait_status(canceled.id, JobStatus.CANCELED).meta["stage"] == "canceled"
    cluster.wait_status(stopped.id, JobStatus.STOPPED)
    for job in (canceled, stopped):
        assert not cluster.storage.exists(f"outputs/{job.id}/output.png")
    registry = cluster.queue("shared", "tiny").started_job_registry
    wait_for(lambda: not registry.get_job_ids(), "the started registry to empty")
    after = worker.metrics()
    labels = {"engine": "tiny", "status": "canceled"}
    finished = "megasr_jobs_finished_total"
    assert value(after, finished, **labels) - value(before, finished, **labels) == 2


def test_out_of_memory_halves_the_batch(cluster: Cluster, worker, photo) -> None:
    reference = cluster.submit_one("shared", cluster.payload(photo))
    expected = cluster.output(cluster.wait_status(reference.id, JobStatus.FINISHED))
    before = worker.metrics()
    oom = cluster.submit_one("shared", cluster.payload(photo, engine="tiny-oom"))  # 4 tiles

    done = cluster.wait_status(oom.id, JobStatus.FINISHED)

    after = worker.metrics()
    assert value(after, "megasr_oom_retries_total") - value(before, "megasr_oom_retries_total") == 1
    calls = value(after, "megasr_batch_size_tiles_count") - value(
        before, "megasr_batch_size_tiles_count"
    )
    assert calls == 2  # 4 tiles ran out of memory, then 2 + 2
    assert np.abs(cluster.output(done) - expected).max() <= 1


def test_nan_output_is_retried_in_float32(cluster: Cluster, worker, photo) -> None:
    reference = cluster.submit_one("shared", cluster.payload(photo))
    expected = cluster.output(cluster.wait_status(reference.id, JobStatus.FINISHED))
    before = worker.metrics()
    # One engine returns the NaN (the worker reruns on a float32 twin), one reruns itself.
    overflows = cluster.submit(
        "shared", [cluster.payload(photo, engine=e) for e in ("tiny-nan", "tiny-nan-rerun")]
    )

    done = [cluster.wait_status(job.id, JobStatus.FINISHED) for job in overflows]

    after = worker.metrics()
    retries = value(after, "megasr_nan_retries_total") - value(before, "megasr_nan_retries_total")
    assert retries == 2  # one engine call each, each retried once
    for job in done:
        assert np.abs(cluster.output(job) - expected).max() <= 1


# -- workers of their own ---------------------------------------------------------------------


def test_killed_worker_job_is_retried_by_a_new_worker(cluster: Cluster, photo) -> None:
    doomed = WorkerProcess(cluster, "kill", "doomed-worker")
    rescuer = None
    try:
        doomed.wait_ready()
        doomed.hold.touch()  # its engine never finishes a call
        job = cluster.submit_one("kill", cluster.payload(photo))
        started = cluster.wait_status(job.id, JobStatus.STARTED)
        assert started.worker_name == "doomed-worker"
        rescuer = WorkerProcess(cluster, "kill", "rescuer-worker")  # no hold file of its own

        # Heartbeats keep a long-running job ours: past its first 3 s lease, RQ's cleanup
        # (as the gateway runs it) still finds it started, not abandoned.
        def beat_past_first_lease() -> bool:
            beat = cluster.job(job.id).last_heartbeat
            return beat is not None and (beat - started.started_at).total_seconds() > 4

        wait_for(beat_past_first_lease, "a heartbeat past the first lease")
        clean_registries(cluster.queue("kill", "tiny"))
        assert cluster.status(job.id) == JobStatus.STARTED
        assert job.id in cluster.queue("kill", "tiny").started_job_registry.get_job_ids()
        rescuer.wait_ready()

        doomed.process.kill()
        doomed.process.wait()

        done = cluster.wait_status(job.id, JobStatus.FINISHED)
        assert done.worker_name == "rescuer-worker"
        assert done.retries_left == cluster.settings("kill").max_retries - 1
        assert cluster.output(done).shape == (160, 192, 3)
    finally:
        doomed.stop()
        if rescuer is not None:
            rescuer.stop()


def test_a_job_abandoned_on_its_last_try_fails_and_says_so(cluster: Cluster, photo) -> None:
    """A worker dies holding a job with no retries left: the next worker's registry cleanup
    fails the job and sends its webhook, as the dead worker would have."""
    receiver = WebhookReceiver()
    doomed = WorkerProcess(cluster, "abandon", "abandoning-worker")
    cleaner = None
    try:
        doomed.wait_ready()
        doomed.hold.touch()  # its engine never finishes a call
        payload = cluster.payload(photo, webhook_url=receiver.url)
        job = cluster.submit_one("abandon", payload, max_retries=0)
        cluster.wait_status(job.id, JobStatus.STARTED)
        doomed.process.kill()
        doomed.process.wait()
        cleaner = WorkerProcess(cluster, "abandon", "cleaning-worker").wait_ready()

        failed = cluster.wait_status(job.id, JobStatus.FAILED)
        wait_for(lambda: receiver.deliveries, "the webhook")
    finally:
        receiver.close()
        doomed.stop()
        if cleaner is not None:
            cleaner.stop()

    ((headers, _),) = receiver.deliveries
    assert headers["x-megasr-event"] == "job.failed"
    view = receiver.bodies(SECRET)[job.id]
    assert view["status"] == "failed" and view["output"] is None
    assert view["error"]["type"].endswith("job-failed")
    assert failed.meta["error"] == view["error"]
    assert receiver.attempts == {job.id: 2}  # 503 first, then retried


def test_sigterm_finishes_the_batch_in_hand(cluster: Cluster, photo) -> None:
    """Draining, the worker is live but not ready; drained, both probes answer 503 for the
    linger (a minute here, so the test need not race it) until a second SIGTERM ends it."""
    linger = {"MEGASR_WORKER_EXIT_LINGER_S": "60"}
    worker = WorkerProcess(cluster, "term", "terminated-worker", env=linger)
    try:
        worker.wait_ready()
        worker.hold.touch()
        in_hand = cluster.submit("term", [cluster.payload(photo) for _ in range(2)])
        for job in in_hand:
            cluster.wait_status(job.id, JobStatus.STARTED)
        waiting = cluster.submit_one("term", cluster.payload(photo))

        worker.process.send_signal(signal.SIGTERM)
        wait_for(
            lambda: cluster.connection.hget(f"rq:worker:{worker.name}", "shutdown_requested_date"),
            "the shutdown request",
        )
        assert http_get(worker.url + "/readyz") == (503, b'{"status": "draining"}')
        assert http_get(worker.url + "/healthz") == (200, b'{"status": "ok"}')
        worker.hold.unlink()

        wait_for(lambda: http_get(worker.url + "/healthz")[0] == 503, "/healthz to answer 503")
        assert worker.process.poll() is None, "the worker exited instead of lingering"
        status, body = http_get(worker.url + "/healthz")
        assert (status, json.loads(body)["status"]) == (503, "exiting")
        assert http_get(worker.url + "/readyz") == (503, b'{"status": "exiting"}')
        for job in in_hand:
            assert cluster.status(job.id) == JobStatus.FINISHED
        assert cluster.status(waiting.id) == JobStatus.QUEUED

        worker.process.send_signal(signal.SIGTERM)  # ends the linger at once
        assert worker.process.wait(timeout=DEADLINE_S) == 0
    finally:
        worker.stop()


def test_burst_worker_drains_the_queue_and_exits(cluster: Cluster, photo) -> None:
    job = cluster.submit_one("burst", cluster.payload(photo, scale=1))
    worker = WorkerProcess(cluster, "burst", "burst-worker", burst=True)
    try:
        assert worker.process.wait(timeout=60) == 0
    finally:
        worker.stop()
    assert cluster.output(cluster.job(job.id)).shape == (40, 48, 3)


# -- the megasr engine: per-job generation options ----------------------------------------------


@pytest.fixture(scope="module")
def megasr_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Settings of a worker serving a tiny MegaSR checkpoint whose 128-pixel latent tile
    covers each test image's output (96 x 120) whole, so a step of one job is one tile."""
    checkpoint = tmp_path_factory.mktemp("tiny-megasr")
    init_tiny_checkpoint(checkpoint, seed=0)
    return {
        "MEGASR_WORKER_ENGINES": json.dumps(["megasr"]),
        "MEGASR_MEGASR_MODEL": str(checkpoint),
        "MEGASR_TILE": "128",
    }


@pytest.fixture(scope="module")
def megasr_worker(cluster: Cluster, megasr_env: dict[str, str]) -> Iterator[WorkerProcess]:
    process = WorkerProcess(cluster, "megasr", "megasr-worker", env=megasr_env)
    try:
        yield process.wait_ready()
    finally:
        process.stop()


def test_megasr_jobs_share_forward_passes_and_equal_each_alone(
    cluster: Cluster,
    megasr_worker: WorkerProcess,
    megasr_env: dict[str, str],
    coffee: np.ndarray,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """MegaSR jobs go to the engine whole, in one call, whatever their prompts, seeds and
    sampling options: at every denoising step their latent tiles share one forward pass."""
    cup, saucer = coffee[100:124, 200:230], coffee[250:274, 350:380]  # 96 x 120 out, one tile
    payloads = [
        cluster.payload(cup, engine="megasr", prompt="a cup", seed=1, steps=2, color_fix="wavelet"),
        cluster.payload(saucer, engine="megasr", prompt="a saucer", negative_prompt="blur", seed=7),
        cluster.payload(cup, engine="megasr", prompt="a cup", seed=2, steps=2, guidance_scale=3),
        cluster.payload(cup, engine="megasr", prompt="a cup", seed=1, steps=1),
    ]
    calls, tiles = "megasr_batch_size_tiles_count", "megasr_batch_size_tiles_sum"

    before = megasr_worker.metrics()
    jobs = cluster.submit("megasr", payloads)
    batched = [cluster.output(cluster.wait_status(j.id, JobStatus.FINISHED)) for j in jobs]
    after = megasr_worker.metrics()
    # Steps 1 and 2 of all jobs but the one-step job, steps 3 and 4 of the second (the
    # checkpoint's default of 4 steps): passes of 4, 3, 1 and 1 tiles.
    assert value(after, calls) - value(before, calls) == 4
    assert value(after, tiles) - value(before, tiles) == 4 + 3 + 1 + 1
    assert "retrying each" not in Path(megasr_worker.log.name).read_text()
    # Progress counts denoising steps (the saucer's are the checkpoint's default 4).
    assert cluster.job(jobs[1].id).meta["work"] == {"done": 4, "total": 4, "unit": "steps"}

    assert batched[0].shape == (96, 120, 3)
    with one_thread():
        alone = run_alone_with_plain_rq(cluster, payloads, monkeypatch, megasr_env)
    for batched_output, alone_output in zip(batched, alone, strict=True):
        assert np.abs(batched_output.astype(int) - alone_output).max() <= 1
    # The options reached the engine: another seed, or another step count, another image.
    assert np.abs(batched[0].astype(int) - batched[3]).max() > 20
    assert np.abs(batched[0].astype(int) - batched[2]).max() > 20
