"""Cancel requests, in a Redis key of their own.

RQ's ``job.cancel()`` sets the job's status, but a worker that has already dequeued the job
overwrites that status when it marks the job started, and RQ's stop-job command reaches only
the first job of a batch. So the gateway also records every cancel under
``megasr:cancel:{job_id}``, a key that only the gateway writes: the worker checks it before
it starts a job, between tile batches and before it stores a result, and drops the job when
it is set.
"""

from __future__ import annotations

from redis import Redis

CANCEL_KEY_PREFIX = "megasr:cancel:"


def cancel_key(job_id: str) -> str:
    return CANCEL_KEY_PREFIX + job_id


def request_cancel(connection: Redis, job_id: str, ttl_s: int) -> None:
    """Record that ``job_id`` is canceled; the record outlives the job's retention."""
    connection.set(cancel_key(job_id), "1", ex=ttl_s)


def is_cancel_requested(connection: Redis, job_id: str) -> bool:
    return bool(connection.exists(cancel_key(job_id)))
