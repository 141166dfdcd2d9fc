"""Jobs whose worker died or vanished: the cleanup the gateway and idle workers run.

Two places can strand a job, and each pass of :func:`maintain_queue` looks at both, for one
engine queue at a time, under RQ's own maintenance lock of that queue (the lock RQ's workers
take), so two cleaners never act on one job:

- **the started registry**: a job whose lease ran out (its worker died or froze; see
  :mod:`megasr.worker.lease`) is handed to RQ's abandoned-job handling, which retries it or,
  on its last try, fails it. :func:`on_abandoned` runs first: a job that shared its worker
  with other jobs (a batch) cannot be blamed for the crash, so it gets its retry back and
  runs alone next time; a job that crashed a worker while alone spends a retry as RQ does.
  A poison input therefore costs its batch-mates no retry, and itself one per crash.
- **the intermediate list**: RQ moves a job there as a worker dequeues it, and the worker
  takes it out when it starts it. One still there, with no execution, a lease
  (``heartbeat_ttl_s``) after a cleaner first saw it, was taken by a worker that died before
  starting it: it goes back to the front of its queue, without spending a retry (it never
  ran).

When the caller knows that a queue's workers are all gone (``megasr serve`` after it stopped
its one worker), :func:`hand_back` does the same at once, without waiting for the leases to
run out, and the interrupted jobs keep their retries: stopping the service is nobody's fault.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from types import TracebackType

from rq import Queue
from rq.exceptions import AbandonedJobError
from rq.job import Job
from rq.registry import clean_registries
from rq.utils import now
from rq.worker_registration import clean_worker_registry

from megasr.jobs import TASK_FUNC

logger = logging.getLogger("megasr.recovery")

# Fields of the RQ job hash that only this project writes (RQ leaves unknown fields alone).
OWNER_FIELD = "megasr_owner"  # the worker and execution that run the job now
BATCH_FIELD = "megasr_batch"  # how many jobs that worker held when it started this one
ALONE_FIELD = "megasr_alone"  # "1": recovered from a crashed batch, runs alone from now on

# RQ's own lock expires after 15 minutes; a cleaner killed mid-pass should not stop
# recovery for that long, and a pass takes well under this.
MAINTENANCE_LOCK_TTL_S = 60

ExceptionHandler = Callable[..., bool]

# Back to the front of its queue, unless a worker started it (took it out) in the meantime.
_REQUEUE = """
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
redis.call('DEL', KEYS[3])
redis.call('LPUSH', KEYS[2], ARGV[1])
return 1
"""


def on_abandoned(
    job: Job,
    kind: type[BaseException] | None,
    error: BaseException | None,
    traceback: TracebackType | None,
) -> bool:
    """RQ exception handler, run before RQ retries or fails a job whose lease lapsed: a job
    that was batched with others gets its retry back and is marked to run alone."""
    if kind is not AbandonedJobError or job.func_name != TASK_FUNC:
        return True
    batch, alone = job.connection.hmget(job.key, BATCH_FIELD, ALONE_FIELD)
    jobs = int(batch or 1)
    if jobs > 1 and not alone:
        job.retries_left = (job.retries_left or 0) + 1  # RQ's retry takes it back off
        job.connection.hset(job.key, ALONE_FIELD, "1")
        logger.warning("job %s lost its worker in a batch of %d; it runs alone next", job.id, jobs)
    return True  # the next handler runs too


def maintain_queue(
    queue: Queue, exception_handlers: Sequence[ExceptionHandler], intermediate_grace_s: float
) -> bool:
    """One cleanup pass over ``queue``, if no other cleaner holds its lock; True when it ran."""
    connection = queue.connection
    if not connection.set(queue.registry_cleaning_key, 1, nx=True, ex=MAINTENANCE_LOCK_TTL_S):
        return False
    try:
        clean_registries(queue, exception_handlers=list(exception_handlers))
        clean_worker_registry(queue)
        recover_intermediate(queue, intermediate_grace_s)
    finally:
        connection.delete(queue.registry_cleaning_key)
    return True


def recover_intermediate(queue: Queue, grace_s: float) -> int:
    """Requeue jobs dequeued by a worker that died before starting them; how many."""
    intermediate = queue.intermediate_queue
    job_ids = intermediate.get_job_ids()
    if not job_ids:
        return 0
    running = set(queue.started_job_registry.get_job_ids(cleanup=False))
    recovered = 0
    for job_id in job_ids:
        if job_id in running:
            continue  # a worker is starting it right now
        if not queue.connection.exists(Job.key_for(job_id)):
            intermediate.remove(job_id)  # expired or deleted: nothing to run
            continue
        first_seen = intermediate.get_first_seen(job_id)
        if first_seen is None:
            intermediate.set_first_seen(job_id)
            continue
        if (now() - first_seen).total_seconds() <= grace_s:
            continue
        if requeue_from_intermediate(queue, job_id):
            recovered += 1
            logger.warning("job %s was dequeued but never started; queued again", job_id)
    return recovered


def hand_back(queue: Queue) -> int:
    """Queue again every job that a worker of ``queue`` had taken, now and keeping its
    retries; how many. Only for a queue none of whose workers runs any more."""
    started = queue.started_job_registry
    handed = len(started.get_job_ids(cleanup=False))
    started.cleanup(timestamp=float("inf"), exception_handlers=[_keep_retry])
    for job_id in queue.intermediate_queue.get_job_ids():
        handed += requeue_from_intermediate(queue, job_id)
    return handed


def _keep_retry(
    job: Job,
    kind: type[BaseException] | None,
    error: BaseException | None,
    traceback: TracebackType | None,
) -> bool:
    """RQ exception handler: an abandoned job gets back the retry RQ's requeue takes off."""
    if kind is AbandonedJobError and job.func_name == TASK_FUNC:
        job.retries_left = (job.retries_left or 0) + 1
    return True


def requeue_from_intermediate(queue: Queue, job_id: str) -> bool:
    """Put a dequeued job back at the front of its queue, unless a worker started it (took
    it out of the intermediate list) first; True when it went back."""
    intermediate = queue.intermediate_queue
    keys = [intermediate.key, queue.key, intermediate.get_first_seen_key(job_id)]
    return bool(queue.connection.register_script(_REQUEUE)(keys=keys, args=[job_id]))
