"""Faults with real processes: workers frozen, killed and wrecked mid-batch, Redis restarted,
storage and the webhook receiver down for a while, an engine call that hangs for good.

Afterwards every job has succeeded or failed with a reason; none is lost, none has a second
result or a second webhook, none is left queued or started. The workers are real ``megasr
worker`` processes on the tiny engines of :mod:`worker_engines`; the registry cleanup is the
gateway's own maintenance pass, run from this process as the gateway runs it. Each step waits
for an event (a job started by a given worker, a log line, a metric, an exit status), never
for time: a hold file keeps a worker's engine call in hand for exactly as long as a step needs.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from rq.job import Job, JobStatus
from rq.results import Result
from webhook_receiver import LOOPBACK_NETWORKS, Answer, WebhookReceiver, fail_first
from worker_support import SECRET, Cluster, WorkerProcess, value, wait_for

from megasr.embedded_redis import EmbeddedRedis
from megasr.queue import EngineQueues
from megasr.recovery import ALONE_FIELD
from megasr.service.context import Gateway
from megasr.service.maintenance import maintain_once
from megasr.worker.health import EXIT_UNHEALTHY

QUEUE = "chaos"
# The faulty engine's queue first: a worker looks at it before the other's, so a poison job
# comes first in its batch and its batch-mates are still in hand when the device fails.
ENGINES = ["worker_engines:DeviceFaultEngine", "worker_engines:TinyEngine"]
WEBHOOK_ATTEMPTS = 60  # waits of 0.05 s doubling up to 1 s: a receiver down for a minute
WORKER_ENV = {
    "MEGASR_WORKER_ENGINES": json.dumps(ENGINES),
    "MEGASR_WEBHOOK_ATTEMPTS": str(WEBHOOK_ATTEMPTS),
    "MEGASR_WEBHOOK_MAX_BACKOFF_S": "1",
    "MEGASR_STORAGE_RETRY_S": "60",
}
TERMINAL = (JobStatus.FINISHED, JobStatus.FAILED)


class Fleet:
    """Redis, storage, a webhook receiver, the gateway's cleanup, and workers to wreck."""

    def __init__(self, root: Path, redis: EmbeddedRedis, crop: np.ndarray) -> None:
        self.redis = redis
        self.cluster = Cluster(root, redis)
        self.receiver_down = False
        self.receiver = WebhookReceiver(self._answer)
        settings = self.cluster.settings(
            QUEUE,
            auth_enabled=False,
            heartbeat_interval_s=0.5,
            heartbeat_ttl_s=3,
            maintenance_interval_s=0.5,
            webhook_secret=SECRET,
            webhook_backoff_s=0.05,
            webhook_max_backoff_s=1.0,
            webhook_attempts=WEBHOOK_ATTEMPTS,
            webhook_allowed_networks=LOOPBACK_NETWORKS,
        )
        self.gateway = Gateway.from_settings(settings)
        self.workers: list[WorkerProcess] = []
        self.jobs: list[str] = []
        self.faults: list[str] = []
        self.crop = crop  # one 32-pixel tile

    def _answer(self, attempt: int) -> Answer:
        """503 to every delivery while the receiver is "down", else as usual."""
        return (503, {}) if self.receiver_down else fail_first(attempt)

    def start(self, name: str, standby: bool = False, **env: str) -> WorkerProcess:
        """A worker process; ``standby`` holds it in its engines' warm-up until
        :meth:`release`, so it loads while other steps run, then takes work at once."""
        if standby:
            (self.cluster.root / f"hold-{name}").touch()
        worker = WorkerProcess(self.cluster, QUEUE, name, env={**WORKER_ENV, **env})
        self.workers.append(worker)
        return worker

    def release(self, worker: WorkerProcess) -> None:
        worker.hold.unlink()
        worker.wait_ready()

    def payloads(self, count: int, pixels: np.ndarray | None = None, **params) -> list[dict]:
        image = self.crop if pixels is None else pixels
        return [
            self.cluster.payload(image, webhook_url=self.receiver.url, **params)
            for _ in range(count)
        ]

    def submit(self, count: int = 0, payloads: list[dict] = (), **settings) -> list[str]:
        """Queue ``count`` jobs of the tiny engine, or ``payloads``, in one transaction."""
        payloads = list(payloads) or self.payloads(count)
        ids = [job.id for job in self.cluster.submit(QUEUE, payloads, **settings)]
        self.jobs += ids
        return ids

    def held_by(self, worker: WorkerProcess) -> list[str]:
        """Jobs ``worker`` has started and holds now."""
        return [
            job_id
            for job_id in self.jobs
            if (job := self.job(job_id)).get_status() == JobStatus.STARTED
            and job.worker_name == worker.name
        ]

    def job(self, job_id: str) -> Job:
        return self.cluster.job(job_id)

    def maintain(self) -> None:
        """One pass of the gateway's maintenance, if its interval has passed."""
        maintain_once(self.gateway)

    def all_done(self, ids: list[str]) -> bool:
        self.maintain()
        return all(self.cluster.status(job_id) in TERMINAL for job_id in ids)

    def webhooks_delivered(self) -> bool:
        """Every job that ended has its webhook. Waited for before a worker is killed, so no
        delivery is mid-attempt in it: the outbox would keep such a delivery (another process
        delivers it), but only once its claim's lease of tens of seconds has run out."""
        ended = [j for j in self.jobs if self.cluster.status(j) in TERMINAL]
        return set(ended) <= set(self.receiver.accepted())

    def kill(self, worker: WorkerProcess, sig: signal.Signals, fault: str) -> None:
        wait_for(self.webhooks_delivered, "earlier webhooks to be delivered")
        os.kill(worker.process.pid, sig)
        if sig == signal.SIGKILL:
            worker.process.wait()
        self.faults.append(fault)

    def close(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.receiver.close()
        self.gateway.close()


@pytest.fixture
def fleet(tmp_path: Path, coffee: np.ndarray) -> Iterator[Fleet]:
    with EmbeddedRedis(tmp_path / "redis") as redis:
        fleet = Fleet(tmp_path, redis, coffee[100:124, 200:230])
        try:
            yield fleet
        finally:
            fleet.close()


def test_no_job_is_lost_or_run_twice_through_crashes_and_outages(fleet: Fleet) -> None:
    cluster = fleet.cluster
    w1 = fleet.start("w1")
    # The workers that take over later load now, alongside, held in their warm-up.
    w2, w3, w4 = (fleet.start(name, standby=True) for name in ("w2", "w3", "w4"))
    hangs = fleet.start("hangs", standby=True, MEGASR_WATCHDOG_TIMEOUT_S="2")
    w1.wait_ready()

    # 1. A worker freezes holding a batch (SIGSTOP) past its lease. The cleanup gives its jobs
    # to another worker, which finishes them; thawed, the first must not finish them again.
    w1.hold.touch()
    wave = fleet.submit(8)
    frozen = wait_for(lambda: fleet.held_by(w1), "w1 to hold a batch")
    fleet.kill(w1, signal.SIGSTOP, "worker frozen past its lease")
    fleet.release(w2)
    wait_for(lambda: fleet.all_done(wave), "w2 to finish the first wave")
    os.kill(w1.process.pid, signal.SIGCONT)
    w1.hold.unlink()
    wait_for(lambda: "no longer ours" in Path(w1.log.name).read_text(), "w1 to drop its jobs")
    assert {fleet.job(j).worker_name for j in frozen} == {"w2"}

    # 2. Both workers are SIGKILLed, each holding a batch; another takes over.
    w1.hold.touch()
    w2.hold.touch()
    first = fleet.submit(4)
    holder = wait_for(lambda: next((w for w in (w1, w2) if fleet.held_by(w)), None), "a batch")
    other = w2 if holder is w1 else w1
    second = fleet.submit(4)
    wait_for(lambda: fleet.held_by(other), "the other worker to hold a batch")
    fleet.kill(holder, signal.SIGKILL, "worker SIGKILLed mid-batch")
    fleet.kill(other, signal.SIGKILL, "worker SIGKILLed mid-batch")
    fleet.release(w3)
    wait_for(lambda: fleet.all_done(first + second), "w3 to finish the killed batches")
    for job_id in first + second:  # batch-mates of a crash spend no retry
        assert fleet.job(job_id).retries_left == cluster.settings(QUEUE).max_retries

    # 3. A sticky CUDA error under a batch: the job alone in the failed call fails, the worker
    # hands the rest back and exits unhealthy; the next worker finishes them.
    poison = fleet.payloads(1, np.full_like(fleet.crop, 255), engine="tiny-fault")
    batch = fleet.submit(payloads=poison + fleet.payloads(3), max_retries=0)
    poison, mates = batch[:1], batch[1:]
    wait_for(lambda: w3.process.poll() is not None, "w3 to stop on the device fault")
    assert w3.process.returncode == EXIT_UNHEALTHY
    fleet.faults.append("sticky CUDA error")
    for job_id in mates:  # handed back without spending a retry (they had none to spend)
        assert fleet.job(job_id).get_status() == JobStatus.QUEUED
        assert cluster.connection.hget(f"rq:job:{job_id}", ALONE_FIELD) == b"1"

    # 4. Redis restarts while a worker holds a batch, the webhook receiver being down.
    fleet.release(w4)
    w4.hold.touch()
    wave = fleet.submit(6)
    through_restart = wait_for(lambda: fleet.held_by(w4), "w4 to hold a batch")
    fleet.receiver_down = True
    fleet.faults.append("webhook receiver down")
    fleet.redis.stop()  # it saves its data on the way out
    fleet.redis.start()
    fleet.faults.append("Redis restarted")
    w4.hold.unlink()
    wait_for(lambda: fleet.all_done(mates + wave), "w4 to go on after the restart")
    fleet.receiver_down = False
    for job_id in through_restart:  # the batch in hand went on: same worker, same run
        job = fleet.job(job_id)
        assert (job.get_status(), job.worker_name) == (JobStatus.FINISHED, "w4")
        assert [r.type for r in job.results()] == [Result.Type.SUCCESSFUL]

    # 5. Storage goes away under a batch and comes back.
    w4.hold.touch()
    wave = fleet.submit(4)
    wait_for(lambda: fleet.held_by(w4), "w4 to hold a batch")
    outputs = cluster.data_dir / "objects" / "outputs"
    outputs.rename(outputs.with_name("outputs.away"))
    outputs.write_bytes(b"not a folder")  # every result write fails
    fleet.faults.append("storage down")
    w4.hold.unlink()
    retries = "megasr_storage_retries_total"
    wait_for(lambda: value(w4.metrics(), retries) > 0, "w4 to retry the storage")
    outputs.unlink()
    outputs.with_name("outputs.away").rename(outputs)
    wait_for(lambda: fleet.all_done(wave), "w4 to store the results")
    w4.stop()

    # 6. An engine call hangs for good: past the watchdog's timeout its job fails with the
    # reason and the worker exits unhealthy, the call still hanging (its hold is never lifted).
    fleet.release(hangs)
    hangs.hold.touch()
    hung = fleet.submit(1, max_retries=0)
    assert hangs.process.wait(timeout=60) == EXIT_UNHEALTHY
    assert hangs.hold.exists()
    fleet.faults.append("engine call hung")
    wait_for(lambda: fleet.all_done(fleet.jobs), "every job to end")
    wait_for(fleet.webhooks_delivered, "every webhook", timeout_s=90)

    # Every job ended once, with one result and one webhook; nothing is left anywhere.
    jobs = {job_id: fleet.job(job_id) for job_id in fleet.jobs}
    failed = [j for j, job in jobs.items() if job.get_status() == JobStatus.FAILED]
    assert failed == poison + hung
    assert "the device failed: CUDA error" in jobs[poison[0]].meta["error"]["detail"]
    assert "made no progress" in jobs[hung[0]].meta["error"]["detail"]
    assert "worker unhealthy" in Path(hangs.log.name).read_text()
    successes = {j: _successes(job) for j, job in jobs.items()}
    assert all(successes[j] == (0 if j in failed else 1) for j in jobs), successes
    for job_id, job in jobs.items():
        if job_id not in failed:
            assert cluster.storage.exists(job.meta["output"]["key"])
    accepted = fleet.receiver.accepted()
    assert {j: len(bodies) for j, bodies in accepted.items()} == dict.fromkeys(jobs, 1)
    views = fleet.receiver.bodies(SECRET)
    assert {j: views[j]["status"] for j in jobs} == {
        j: "failed" if j in failed else "succeeded" for j in jobs
    }
    _assert_nothing_left(fleet)
    lost = sum(1 for job in jobs.values() if job.get_status() not in TERMINAL)
    duplicated = sum(1 for j in jobs if successes[j] > 1 or len(accepted[j]) > 1)
    print(
        f"\nfaults: {len(jobs)} jobs, {len(fleet.faults)} faults ({'; '.join(fleet.faults)}), "
        f"lost {lost}, duplicated {duplicated}"
    )
    assert (lost, duplicated) == (0, 0)


def _successes(job: Job) -> int:
    return sum(1 for result in job.results() if result.type == Result.Type.SUCCESSFUL)


def _assert_nothing_left(fleet: Fleet) -> None:
    """No job waits in a queue, an intermediate list or the started registry."""
    queues = EngineQueues(fleet.cluster.settings(QUEUE), fleet.cluster.connection).all()
    assert queues, "the jobs went through engine queues"
    for queue in queues:
        assert queue.job_ids == [], queue.name
        assert queue.intermediate_queue.get_job_ids() == [], queue.name
        assert queue.started_job_registry.get_job_ids(cleanup=False) == [], queue.name
