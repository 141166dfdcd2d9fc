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
from worker_support import SECRET, Cluster, WorkerProcess, http_get, value, wait_for

from megasr.embedded_redis import EmbeddedRedis
from megasr.queue import EngineQueues
from megasr.recovery import ALONE_FIELD, BATCH_FIELD
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

    def release(self, worker: WorkerProcess, timeout_s: float = 60) -> None:
        worker.hold.unlink()
        worker.wait_ready(timeout_s)

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

    def crashed_in(self, job_id: str) -> int:
        """How many jobs the worker running ``job_id`` held (read after it was killed); 0
        for a job no worker had started."""
        job = self.job(job_id)
        if job.get_status() != JobStatus.STARTED:
            return 0
        return int(self.cluster.connection.hget(job.key, BATCH_FIELD) or 1)

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
    w2, w4 = (fleet.start(name, standby=True) for name in ("w2", "w4"))
    w3 = fleet.start("w3", standby=True, MEGASR_WORKER_EXIT_LINGER_S="60")
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
    # Which worker dequeued which job is a race, so a killed worker may have held a job
    # alone: that one is to blame for its crash and spends a retry, as RQ would.
    held_with = {job_id: fleet.crashed_in(job_id) for job_id in first + second}
    assert any(jobs > 1 for jobs in held_with.values()), "no killed worker held a batch"
    fleet.release(w3)
    wait_for(lambda: fleet.all_done(first + second), "w3 to finish the killed batches")
    max_retries = cluster.settings(QUEUE).max_retries
    for job_id in first + second:  # batch-mates of a crash spend no retry
        assert fleet.job(job_id).retries_left == max_retries - (held_with[job_id] == 1)

    # 3. A sticky CUDA error under a batch: the job alone in the failed call fails, the worker
    # hands the rest back and exits unhealthy; the next worker finishes them.
    poison = fleet.payloads(1, np.full_like(fleet.crop, 255), engine="tiny-fault")
    batch = fleet.submit(payloads=poison + fleet.payloads(3), max_retries=0)
    poison, mates = batch[:1], batch[1:]
    # Failed, it answers 503 on both probes for its linger (long here), until SIGTERM.
    exiting = (503, b'{"status": "exiting"}')
    wait_for(lambda: http_get(w3.url + "/readyz") == exiting, "w3 to stop on the device fault")
    status, body = http_get(w3.url + "/healthz")
    assert (status, json.loads(body)["status"]) == (503, "unhealthy")
    assert "the device failed" in json.loads(body)["detail"] and w3.process.poll() is None
    w3.process.send_signal(signal.SIGTERM)
    assert w3.process.wait(timeout=30) == EXIT_UNHEALTHY
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


# -- killed at each point of a job's end ------------------------------------------------------

# Where a worker stops itself before the test kills it (megasr.worker.stop_points), in the
# order a job meets them, and the engines of the kill test's workers.
STOP_POINTS = ["engine-returned", "result-stored", "claimed", "ended"]
# Six workers import torch and load at once: on 2 busy cores the first may take minutes.
LOADING_S = 240
KILL_ENV = {
    "MEGASR_WORKER_ENGINES": json.dumps(["worker_engines:TinyEngine", "worker_engines:PickyEngine"])
}


def _stop_at(point: str) -> dict[str, str]:
    return {"MEGASR_TEST_STOP_AT": point, **KILL_ENV}


def stopped(worker: WorkerProcess) -> bool:
    """The process is stopped (SIGSTOP): its state in /proc is T."""
    stat = Path(f"/proc/{worker.process.pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] in ("T", "t")


def kill_at_its_stop_point(
    fleet: Fleet, victim: WorkerProcess, point: str, what: str = ""
) -> list[str]:
    """Let ``victim`` take work until it stops itself at ``point``; SIGKILL it there.
    Returns the jobs it held (started and not ended) when it died."""
    fleet.release(victim, timeout_s=LOADING_S)
    wait_for(lambda: stopped(victim), f"{victim.name} to stop at {point}", timeout_s=60)
    held = fleet.held_by(victim)
    victim.process.kill()
    victim.process.wait()
    assert f"test stop point {point!r} reached" in Path(victim.log.name).read_text()
    fleet.faults.append(f"worker SIGKILLed at {point}{what}")
    return held


def test_a_worker_killed_at_each_point_of_a_jobs_end_ends_it_once_with_one_webhook(
    fleet: Fleet,
) -> None:
    """A worker is killed (SIGKILL) at each point between its engine call's return and the
    job's end being written, and once that end is written but its webhook not yet sent; a
    job failing for good is killed at its claim. Every job still ends once, with one result
    and exactly one webhook: one delivery id, attempted at least once (each receiver's first
    answer is a 503, so every delivery is attempted twice, with the same ``webhook-id``),
    accepted once."""
    failing_victim = fleet.start("stop-failing", standby=True, **_stop_at("claimed"))
    victims = {p: fleet.start(f"stop-{p}", standby=True, **_stop_at(p)) for p in STOP_POINTS}
    rescuer = fleet.start("rescuer", standby=True, **KILL_ENV)

    # First, alone in the queue, so the claim it stops at is its own failure's.
    white = np.full_like(fleet.crop, 255)  # the picky engine fails on an all-white tile
    failing = fleet.submit(payloads=fleet.payloads(1, white, engine="tiny-picky"), max_retries=0)
    held = {
        "claimed (failing)": kill_at_its_stop_point(
            fleet, failing_victim, "claimed", " (a job failing)"
        )
    }
    for point, victim in victims.items():
        fleet.submit(2)  # a batch of two: the second is in hand when the first stops
        held[point] = kill_at_its_stop_point(fleet, victim, point)
    assert all(held.values()), f"each worker died holding a job: {held}"

    fleet.release(rescuer, timeout_s=LOADING_S)
    wait_for(lambda: fleet.all_done(fleet.jobs), "every job to end", timeout_s=90)
    wait_for(fleet.webhooks_delivered, "every webhook", timeout_s=90)

    jobs = {job_id: fleet.job(job_id) for job_id in fleet.jobs}
    assert {j for j, job in jobs.items() if job.get_status() == JobStatus.FAILED} == set(failing)
    # Killed after the end was written: the dead worker's end stands, its webhook was
    # delivered by another process from the outbox.
    ended_by_victim = [j for j, job in jobs.items() if job.worker_name == "stop-ended"]
    assert ended_by_victim and all(
        jobs[j].get_status() == JobStatus.FINISHED for j in ended_by_victim
    )
    for job_id, job in jobs.items():
        assert _successes(job) == (0 if job_id in failing else 1), job_id
        if job_id not in failing:
            assert fleet.cluster.storage.exists(job.meta["output"]["key"])
    accepted = fleet.receiver.accepted()
    assert {j: len(bodies) for j, bodies in accepted.items()} == dict.fromkeys(jobs, 1)
    ids = fleet.receiver.webhook_ids
    assert all(len(set(ids[j])) == 1 and len(ids[j]) >= 2 for j in jobs), ids
    views = fleet.receiver.bodies(SECRET)
    assert {j: views[j]["status"] for j in jobs} == {
        j: "failed" if j in failing else "succeeded" for j in jobs
    }
    _assert_nothing_left(fleet)
    attempts = sum(len(ids[j]) for j in jobs)
    print(
        f"\nkill points: {len(jobs)} jobs, {len(fleet.faults)} kills ({'; '.join(fleet.faults)}); "
        f"each job ended once; {len(jobs)} delivery ids, {attempts} attempts, "
        f"{len(jobs)} accepted"
    )
