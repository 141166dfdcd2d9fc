"""The pieces that keep a job from being lost or run twice, each against a real Redis.

Leases and their fence, the cleanup of lapsed leases and of the intermediate list, the
dequeue of a worker with several engine queues, the watchdog with the worker's ``/healthz``,
sticky device errors and patient storage. No worker process here: each piece is driven
directly, so every race is set up exactly (a lease is made to lapse by moving its registry
score into the past, not by waiting). ``test_worker_faults.py`` shows the same properties with
real worker processes and real faults.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from redis import Redis
from rq import Queue, Retry, SimpleWorker
from rq.exceptions import DequeueTimeout
from rq.job import Job, JobStatus
from worker_support import http_get, wait_for

from megasr.cancellation import request_cancel
from megasr.embedded_redis import EmbeddedRedis
from megasr.errors import ServiceUnavailableError
from megasr.jobs import TASK_FUNC
from megasr.queue import JOB_SERIALIZER, get_queue
from megasr.recovery import ALONE_FIELD, maintain_queue, on_abandoned
from megasr.settings import Settings
from megasr.storage import LocalStorage
from megasr.worker.device_faults import is_fatal_device_error
from megasr.worker.health import WorkerHealth, running_once_started
from megasr.worker.lease import Leases
from megasr.worker.prometheus import WorkerMetrics
from megasr.worker.rq_adapter import EngineQueue
from megasr.worker.status_server import StatusServer
from megasr.worker.storage_retry import RetryingStorage
from megasr.worker.watchdog import Watchdog

TTL_S = 30


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with EmbeddedRedis(tmp_path_factory.mktemp("redis")) as server:
        yield server.url


@pytest.fixture
def connection(redis_url: str) -> Iterator[Redis]:
    client = Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.close()


def engine_queue(connection: Redis, engine: str = "tiny") -> Queue:
    return get_queue(Settings(queue_name="rec"), engine, connection, EngineQueue)


def enqueue(queue: Queue, retries: int = 2) -> Job:
    return queue.enqueue_call(
        TASK_FUNC, args=({"job_id": "x"},), retry=Retry(max=retries) if retries else None
    )


def take(queue: Queue, worker: SimpleWorker, batch_size: int = 1) -> tuple[Job, object, Leases]:
    """What a batching worker does with a job: dequeue it (into the intermediate list), open
    an execution and start it as its own."""
    job, _ = dequeue([queue], None)
    job = Job.fetch(job.id, connection=queue.connection, serializer=JOB_SERIALIZER)
    execution = worker.prepare_execution(job)
    leases = Leases(queue.connection, worker.name, TTL_S, margin_s=1.0)
    assert leases.start(job, queue, execution, batch_size) == "started"
    return job, execution, leases


def dequeue(queues: list[Queue], timeout: float | None) -> tuple[Job, Queue] | None:
    return EngineQueue.dequeue_any(
        queues, timeout, connection=queues[0].connection, serializer=JOB_SERIALIZER
    )


def new_worker(connection: Redis, queue: Queue, name: str) -> SimpleWorker:
    return SimpleWorker([queue], connection=connection, serializer=JOB_SERIALIZER, name=name)


def lapse(job: Job, execution) -> None:
    """The worker froze: its lease ran out a while ago."""
    job.connection.zadd(job.started_job_registry.key, {execution.composite_key: 1})


def cleanup(queue: Queue) -> None:
    assert maintain_queue(queue, [on_abandoned], intermediate_grace_s=0)


# -- leases and the fence -----------------------------------------------------------------------


def test_a_worker_whose_lease_lapsed_cannot_end_the_job_its_successor_runs(connection) -> None:
    queue = engine_queue(connection)
    job = enqueue(queue)
    first = new_worker(connection, queue, "first")
    job_a, run_a, leases_a = take(queue, first)
    assert leases_a.claim(run_a) and leases_a.renew([run_a]) == [True]

    lapse(job_a, run_a)
    assert leases_a.renew([run_a]) == [False]  # a lapsed lease is never revived
    cleanup(queue)  # RQ's abandoned-job handling: retried
    second = new_worker(connection, queue, "second")
    job_b, run_b, leases_b = take(queue, second)

    job_a.meta["stage"] = "stale"
    assert leases_a.save_meta(job_a, run_a) is False
    assert leases_a.claim(run_a) is False
    assert not leases_a.state(job_a, run_a).owned
    assert leases_b.claim(run_b) and leases_b.state(job_b, run_b).owned
    assert Job.fetch(job.id, connection=connection).meta.get("stage") != "stale"
    assert Job.fetch(job.id, connection=connection).worker_name == "second"


def test_a_start_run_again_after_its_reply_was_lost_is_still_started(connection) -> None:
    """The worker's connection retries a command whose reply was lost; the start already
    happened, so its second run must say so, not 'gone' (which would forget the job)."""
    queue = engine_queue(connection)
    enqueue(queue)
    job, execution, leases = take(queue, new_worker(connection, queue, "w"))
    assert leases.start(job, queue, execution, 1) == "started"
    assert leases.claim(execution)


def test_a_lease_shorter_than_two_heartbeats_is_refused() -> None:
    with pytest.raises(ValidationError, match="at least twice heartbeat_interval_s"):
        Settings(heartbeat_interval_s=5, heartbeat_ttl_s=8)
    Settings(heartbeat_interval_s=5, heartbeat_ttl_s=10)


def test_a_lease_about_to_lapse_is_not_claimed(connection) -> None:
    """A claim wants a heartbeat's margin left, so the cleanup cannot take the job while the
    worker's finishing writes run."""
    queue = engine_queue(connection)
    enqueue(queue)
    job, execution, leases = take(queue, new_worker(connection, queue, "w"))
    seconds, microseconds = connection.time()
    soon = seconds + microseconds / 1e6 + 0.5  # less than the 1 s margin left
    connection.zadd(job.started_job_registry.key, {execution.composite_key: soon})
    assert leases.claim(execution) is False
    assert leases.renew([execution]) == [True]  # the heartbeat may still renew it


def test_a_job_canceled_while_queued_is_not_started(connection) -> None:
    queue = engine_queue(connection)
    job = enqueue(queue)
    taken, _ = dequeue([queue], None)
    request_cancel(connection, job.id, ttl_s=60)
    worker = new_worker(connection, queue, "w")
    execution = worker.prepare_execution(taken)
    leases = Leases(connection, worker.name, TTL_S, 1.0)
    assert leases.start(taken, queue, execution, 1) == "canceled"
    assert queue.intermediate_queue.get_job_ids() == []


# -- crashes: who spends a retry ------------------------------------------------------------------


@pytest.mark.parametrize(("batch", "alone", "retries_spent"), [(3, False, 0), (1, False, 1)])
def test_a_crash_costs_a_retry_only_to_a_job_that_ran_alone(
    connection, batch: int, alone: bool, retries_spent: int
) -> None:
    queue = engine_queue(connection)
    enqueue(queue, retries=2)
    job, execution, _ = take(queue, new_worker(connection, queue, "dead"), batch_size=batch)
    lapse(job, execution)

    cleanup(queue)

    after = Job.fetch(job.id, connection=connection)
    assert after.get_status() == JobStatus.QUEUED and queue.job_ids == [job.id]
    assert after.retries_left == 2 - retries_spent
    assert connection.hget(job.key, ALONE_FIELD) == (b"1" if batch > 1 else None)


def test_a_job_that_crashed_a_worker_alone_runs_out_of_retries(connection) -> None:
    """A poison input: recovered from a batch once for free, then charged per crash."""
    queue = engine_queue(connection)
    enqueue(queue, retries=1)
    for batch, status in ((4, JobStatus.QUEUED), (1, JobStatus.QUEUED), (1, JobStatus.FAILED)):
        job, execution, _ = take(queue, new_worker(connection, queue, f"w{batch}{status}"), batch)
        lapse(job, execution)
        cleanup(queue)
        assert Job.fetch(job.id, connection=connection).get_status() == status


# -- the intermediate list ------------------------------------------------------------------------


def test_a_job_taken_by_a_worker_that_died_before_starting_it_is_queued_again(connection):
    queue = engine_queue(connection)
    job = enqueue(queue, retries=0)
    dequeue([queue], None)  # then the worker dies
    assert queue.job_ids == [] and queue.intermediate_queue.get_job_ids() == [job.id]

    cleanup(queue)  # first seen now: a live worker may be about to start it
    assert queue.intermediate_queue.get_job_ids() == [job.id]
    cleanup(queue)  # still there a grace later: nobody will start it

    assert queue.job_ids == [job.id] and queue.intermediate_queue.get_job_ids() == []
    assert Job.fetch(job.id, connection=connection).get_status() == JobStatus.QUEUED
    # The dead worker's successor refuses nothing: the job starts normally.
    taken, execution, leases = take(queue, new_worker(connection, queue, "next"))
    assert taken.id == job.id and leases.state(taken, execution).owned


def test_a_worker_does_not_start_a_job_the_cleanup_already_queued_again(connection) -> None:
    queue = engine_queue(connection)
    enqueue(queue)
    taken, _ = dequeue([queue], None)
    cleanup(queue)
    cleanup(queue)  # requeued: the slow worker's start must not also run it
    worker = new_worker(connection, queue, "slow")
    execution = worker.prepare_execution(taken)
    assert Leases(connection, worker.name, TTL_S, 1.0).start(taken, queue, execution, 1) == "gone"


def test_the_cleanup_waits_for_rqs_maintenance_lock(connection) -> None:
    queue = engine_queue(connection)
    job = enqueue(queue)
    dequeue([queue], None)
    connection.set(queue.registry_cleaning_key, 1)  # a worker or a gateway is cleaning it

    assert maintain_queue(queue, [on_abandoned], 0) is False
    assert maintain_queue(queue, [on_abandoned], 0) is False
    assert queue.intermediate_queue.get_job_ids() == [job.id]
    connection.delete(queue.registry_cleaning_key)
    cleanup(queue)
    cleanup(queue)
    assert queue.job_ids == [job.id]


# -- taking jobs from several engine queues -------------------------------------------------------


def test_a_worker_of_several_engines_takes_each_job_through_its_intermediate_list(connection):
    tiny, other = engine_queue(connection, "tiny"), engine_queue(connection, "other")
    first, second = enqueue(other), enqueue(tiny)

    taken = [dequeue([tiny, other], 1) for _ in range(2)]

    assert [(job.id, queue.name) for job, queue in taken] == [
        (second.id, tiny.name),
        (first.id, other.name),
    ]
    assert tiny.intermediate_queue.get_job_ids() == [second.id]
    assert other.intermediate_queue.get_job_ids() == [first.id]
    with pytest.raises(DequeueTimeout):
        dequeue([tiny, other], 0.3)
    assert dequeue([tiny, other], None) is None


# -- a hung engine call and the worker's health -----------------------------------------------


def test_a_stalled_engine_call_fires_the_watchdog_and_healthz_turns_503() -> None:
    health = WorkerHealth()
    fired = threading.Event()

    def on_stall(idle_s: float) -> None:
        health.fail(f"no progress for {idle_s:.1f} s")
        fired.set()

    watchdog = Watchdog(0.2, on_stall)
    health.checks.append(("the watchdog", lambda: not fired.is_set() or watchdog.is_alive()))
    server = StatusServer("127.0.0.1", 0, WorkerMetrics(), health, lambda: True).start()
    try:
        assert http_get(server.url + "/healthz") == (200, b'{"status": "ok"}')
        watchdog.start()
        with watchdog.watching():  # an engine call that never reports progress
            wait_for(fired.is_set, "the watchdog to fire")
        status, body = http_get(server.url + "/healthz")
    finally:
        watchdog.stop()
        server.close()
    assert status == 503 and b"unhealthy" in body and b"no progress" in body
    assert watchdog.stalled


def test_a_dead_heartbeat_thread_makes_the_worker_unhealthy() -> None:
    health = WorkerHealth()
    thread = threading.Thread(target=lambda: None)
    health.checks.append(("the heartbeat thread", running_once_started(thread)))
    assert health.problem() is None  # not started yet: loading engines
    thread.start()
    thread.join()
    assert health.problem() == "the heartbeat thread is not running"
    assert not health.failed  # a probe failure, not a reason to exit on its own


def test_sticky_device_errors_are_told_from_recoverable_ones() -> None:
    illegal = torch.AcceleratorError("CUDA error: an illegal memory access was encountered")
    wrapped = RuntimeError("engine call failed")
    wrapped.__cause__ = RuntimeError("CUDA error: device-side assert triggered")
    assert is_fatal_device_error(illegal) and is_fatal_device_error(wrapped)
    assert not is_fatal_device_error(torch.OutOfMemoryError("CUDA out of memory"))
    assert not is_fatal_device_error(RuntimeError("CUDA error: out of memory"))
    assert not is_fatal_device_error(ValueError("bad tile shape"))


# -- storage that cannot be reached for a while ---------------------------------------------------


def test_storage_down_for_a_while_is_waited_for(tmp_path: Path) -> None:
    """The outputs folder is unusable (a file stands where it should be) until the worker has
    retried once; then it comes back and the write goes through."""
    local = LocalStorage(tmp_path / "objects")
    blocker = tmp_path / "objects" / "outputs"
    blocker.parent.mkdir(parents=True)
    blocker.write_bytes(b"not a folder")

    def storage_comes_back() -> None:
        blocker.unlink(missing_ok=True)

    storage = RetryingStorage(local, patience_s=30, on_retry=storage_comes_back)
    storage.put("outputs/job/output.png", b"result", "image/png")
    assert local.get("outputs/job/output.png") == b"result"

    impatient = RetryingStorage(LocalStorage(tmp_path / "file"), patience_s=0)
    (tmp_path / "file").write_bytes(b"x")  # the storage root itself is a file: never usable
    with pytest.raises(ServiceUnavailableError):
        impatient.put("outputs/job/output.png", b"result", "image/png")
