"""Who runs a started job, and for how long: the fence that keeps a job from ending twice.

A job's **lease** is RQ's started-registry entry of its execution, whose score is the time the
lease runs out; its **owner** is recorded in the job (``megasr_owner``: the worker's name and
the execution id, so each run of a job has its own). Every write a worker makes to a job goes
through one of the scripts below, each a single atomic step in Redis:

- :meth:`Leases.start` takes the job out of its queue's intermediate list and marks it started
  and owned, or refuses when a cleaner already put it back in the queue (or it was canceled);
- :meth:`Leases.renew` (the heartbeat) extends a lease only while it has not run out and the
  job is still the worker's: a lapsed lease is never revived, since RQ's cleanup may hand the
  job to another worker the moment it lapses;
- :meth:`Leases.claim`, before a job ends (result stored, failed, handed back), checks the
  same with a margin of one heartbeat and extends the lease, so the cleanup cannot take the job
  while RQ's finishing writes run. A worker that lost its job (frozen past its lease, cut
  off from Redis) fails the claim and drops the job: no second result, no second webhook;
- :meth:`Leases.save_meta` writes progress only while the worker owns the job.

Times are the workers' clocks, as in RQ; they must agree to well within a heartbeat (NTP).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from redis import Redis
from rq.executions import Execution, ExecutionRegistry
from rq.job import Job, JobStatus
from rq.queue import Queue
from rq.utils import now, utcformat

from megasr.cancellation import cancel_key
from megasr.recovery import BATCH_FIELD, OWNER_FIELD
from megasr.worker.rq_adapter import mark_started

_START = f"""
if redis.call('HGET', KEYS[2], '{OWNER_FIELD}') == ARGV[2]
   and redis.call('HGET', KEYS[2], 'status') == 'started' then
  return 'started'  -- this very start, run again after its reply was lost
end
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 'gone' end
redis.call('DEL', KEYS[4])
local status = redis.call('HGET', KEYS[2], 'status')
if not status then return 'gone' end
if redis.call('EXISTS', KEYS[3]) == 1 or status == 'canceled' then return 'canceled' end
if status ~= 'queued' then return 'gone' end
redis.call('HSET', KEYS[2], 'status', 'started', 'worker_name', ARGV[5],
           'started_at', ARGV[4], 'last_heartbeat', ARGV[4],
           '{OWNER_FIELD}', ARGV[2], '{BATCH_FIELD}', ARGV[3])
redis.call('PERSIST', KEYS[2])
return 'started'
"""

_RENEW = f"""
local score = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[1]))
local now, ttl = tonumber(ARGV[3]), tonumber(ARGV[4])
if not score or score <= now + tonumber(ARGV[5]) then return 0 end
if redis.call('HGET', KEYS[2], '{OWNER_FIELD}') ~= ARGV[2] then return 0 end
if redis.call('HGET', KEYS[2], 'status') ~= 'started' then return 0 end
redis.call('ZADD', KEYS[1], 'XX', now + ttl, ARGV[1])
redis.call('HSET', KEYS[3], 'last_heartbeat', ARGV[3])
redis.call('EXPIRE', KEYS[3], ttl)
redis.call('ZADD', KEYS[4], 'XX', now + ttl + 60, ARGV[6])
redis.call('EXPIRE', KEYS[4], ttl + 60)
redis.call('HSET', KEYS[2], 'last_heartbeat', ARGV[7])
return 1
"""

_SAVE_META = f"""
if redis.call('HGET', KEYS[1], '{OWNER_FIELD}') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'meta', ARGV[2])
return 1
"""


@dataclass(frozen=True)
class JobState:
    """What a worker checks between engine calls, read in one round trip."""

    cancel_requested: bool
    status: str | None
    owned: bool  # still this execution's, with a lease that has not run out

    @property
    def canceled(self) -> bool:
        """The gateway asked to cancel the job (its cancel key), or RQ's status says so."""
        return self.cancel_requested or self.status == JobStatus.CANCELED


class Leases:
    """The lease scripts of one worker; ``ttl_s`` is the lease, ``margin_s`` what a claim
    wants left of it (one heartbeat)."""

    def __init__(self, connection: Redis, worker_name: str, ttl_s: int, margin_s: float) -> None:
        self.connection = connection
        self.worker_name = worker_name
        self.ttl_s = ttl_s
        self.margin_s = margin_s
        self._start = connection.register_script(_START)
        self._renew = connection.register_script(_RENEW)
        self._save_meta = connection.register_script(_SAVE_META)

    def owner(self, execution: Execution) -> str:
        return f"{self.worker_name}/{execution.id}"

    def start(self, job: Job, queue: Queue, execution: Execution, batch_size: int) -> str:
        """Mark ``job`` started and owned by ``execution``: ``started``, ``canceled`` (it was
        canceled while queued) or ``gone`` (no longer in the intermediate list: a cleaner
        queued it again, or it expired)."""
        started = now()
        keys = [
            queue.intermediate_queue_key,
            job.key,
            cancel_key(job.id),
            queue.intermediate_queue.get_first_seen_key(job.id),
        ]
        args = [job.id, self.owner(execution), batch_size, utcformat(started), self.worker_name]
        outcome = self._start(keys=keys, args=args).decode()
        if outcome == "started":
            mark_started(job, self.worker_name, started)
        return outcome

    def renew(self, executions: list[Execution]) -> list[bool]:
        """Extend the live leases of jobs still ours (the heartbeat), in one round trip;
        False for each lease that is lost."""
        with self.connection.pipeline(transaction=False) as pipeline:
            for execution in executions:
                self._extend(execution, margin_s=0.0, client=pipeline)
            return [bool(renewed) for renewed in pipeline.execute()]

    def claim(self, execution: Execution) -> bool:
        """Before ending the job: True (and the lease extended) only if it is still ours with
        at least a heartbeat of lease left."""
        return bool(self._extend(execution, margin_s=self.margin_s))

    def state(self, job: Job, execution: Execution) -> JobState:
        return self.states([(job, execution)])[0]

    def states(self, pairs: list[tuple[Job, Execution]]) -> list[JobState]:
        """Cancel request, RQ status and ownership of each job, in one round trip."""
        if not pairs:
            return []
        with self.connection.pipeline(transaction=False) as pipeline:
            for job, execution in pairs:
                pipeline.exists(cancel_key(job.id))
                pipeline.hmget(job.key, "status", OWNER_FIELD)
                pipeline.zscore(job.started_job_registry.key, execution.composite_key)
            replies = pipeline.execute()
        states = []
        moment = time.time()
        for index, (_, execution) in enumerate(pairs):
            canceled, (status, owner), score = replies[3 * index : 3 * index + 3]
            status_text = status.decode() if status else None
            owned = (
                owner is not None
                and owner.decode() == self.owner(execution)
                and status_text == JobStatus.STARTED
                and score is not None
                and score > moment
            )
            states.append(JobState(bool(canceled), status_text, owned))
        return states

    def owns(self, job: Job, execution: Execution) -> bool:
        """Whether ``job`` still names this execution as its owner (lease aside)."""
        owner = self.connection.hget(job.key, OWNER_FIELD)
        return owner is not None and owner.decode() == self.owner(execution)

    def save_meta(self, job: Job, execution: Execution) -> bool:
        """Write ``job.meta`` if the job is still ours; False (nothing written) otherwise."""
        meta = job.serializer.dumps(job.meta)
        return bool(self._save_meta(keys=[job.key], args=[self.owner(execution), meta]))

    def _extend(self, execution: Execution, margin_s: float, client: Redis | None = None):
        """The renewal script for ``execution`` (its reply, or queued on ``client``)."""
        job = execution.job
        keys = [
            job.started_job_registry.key,
            job.key,
            execution.key,
            ExecutionRegistry(job.id, self.connection).key,
        ]
        moment = time.time()
        args = [
            execution.composite_key,
            self.owner(execution),
            moment,
            self.ttl_s,
            margin_s,
            execution.id,
            utcformat(now()),
        ]
        return self._renew(keys=keys, args=args, client=client)
