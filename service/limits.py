"""Per-tenant request rate, per-tenant jobs in flight and the queue-depth limit.

All three answer 429 with ``Retry-After`` and keep their state in Redis, so every gateway
replica enforces the same numbers. The request rate is a fixed one-minute window per tenant
(one INCR per request). Jobs in flight are a sorted set of the tenant's job ids, pruned of
finished ones at each submission by reading their RQ status: no worker has to report back.
"""

from __future__ import annotations

import time

from redis import Redis
from redis.client import Pipeline
from rq.job import Job

from megasr.errors import RateLimitedError
from megasr.queue import EngineQueues
from megasr.settings import Settings

_TERMINAL = {b"finished", b"failed", b"stopped", b"canceled"}


def rate_key(tenant: str, window: int) -> str:
    return f"megasr:rate:{tenant}:{window}"


def in_flight_key(tenant: str) -> str:
    return f"megasr:inflight:{tenant}"


def count_request(redis: Redis, settings: Settings, tenant: str) -> dict[str, str]:
    """Count one request of ``tenant``; returns the RateLimit-* headers, raises 429 past it."""
    limit = settings.rate_limit_per_minute
    if not limit:
        return {}
    now = time.time()
    window = int(now // 60)
    reset = 60 - int(now % 60)
    pipe = redis.pipeline()
    pipe.incr(rate_key(tenant, window))
    pipe.expire(rate_key(tenant, window), 61)
    count = int(pipe.execute()[0])
    if count > limit:
        raise RateLimitedError(f"over {limit} requests per minute; retry in {reset} s", reset)
    return {
        "RateLimit-Limit": str(limit),
        "RateLimit-Remaining": str(max(0, limit - count)),
        "RateLimit-Reset": str(reset),
    }


def check_capacity(redis: Redis, queues: EngineQueues, settings: Settings, tenant: str) -> None:
    """Refuse new work when the queues are full or the tenant has too many jobs in flight."""
    retry = settings.busy_retry_after_s
    if settings.max_queue_depth and queues.depth() >= settings.max_queue_depth:
        raise RateLimitedError(
            f"the queue is full ({settings.max_queue_depth} jobs); retry in {retry} s", retry
        )
    most = settings.max_jobs_in_flight
    if most and _jobs_in_flight(redis, tenant) >= most:
        raise RateLimitedError(f"{most} jobs already in flight; retry in {retry} s", retry)


def track_in_flight(pipe: Pipeline, settings: Settings, tenant: str, job_id: str) -> None:
    """Remember a new job of ``tenant`` until its RQ status says it is done (in ``pipe``)."""
    key = in_flight_key(tenant)
    pipe.zadd(key, {job_id: time.time()})
    pipe.expire(key, settings.job_timeout_s * (settings.max_retries + 1) + settings.result_ttl_s)


def _jobs_in_flight(redis: Redis, tenant: str) -> int:
    key = in_flight_key(tenant)
    job_ids = [raw.decode() for raw in redis.zrange(key, 0, -1)]
    if not job_ids:
        return 0
    pipe = redis.pipeline()
    for job_id in job_ids:
        pipe.hget(Job.key_for(job_id), "status")
    statuses = pipe.execute()
    done = [job_id for job_id, status in zip(job_ids, statuses, strict=True) if _done(status)]
    if done:
        redis.zrem(key, *done)
    return len(job_ids) - len(done)


def _done(status: bytes | None) -> bool:
    return status is None or status in _TERMINAL
