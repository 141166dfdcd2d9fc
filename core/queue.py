"""Queue wiring: the Redis connection, the RQ queue and how an upscale job is enqueued.

Jobs are serialised as JSON (not pickle), so nothing read back from Redis can run code and
any language can read a job. The gateway and every worker must use :data:`JOB_SERIALIZER`.
"""

from __future__ import annotations

from typing import Any

from redis import Redis
from rq import Queue, Retry
from rq.job import Job
from rq.serializers import JSONSerializer

from megasr.embedded_redis import EmbeddedRedis
from megasr.errors import ServiceUnavailableError
from megasr.jobs import TASK_FUNC, JobPayload
from megasr.settings import Settings

JOB_SERIALIZER = JSONSerializer

__all__ = [
    "JOB_SERIALIZER",
    "EmbeddedRedis",
    "enqueue_upscale",
    "get_queue",
    "redis_connection",
]


def redis_connection(settings: Settings, socket_timeout: float | None = None) -> Redis:
    """A connection (pool) to ``settings.redis_url``.

    ``socket_timeout`` bounds each command; the gateway sets one so a hung Redis turns into a
    503 instead of a hung request. Workers leave it None: RQ blocks on the queue on purpose.
    """
    if not settings.redis_url:
        raise ServiceUnavailableError(
            "no Redis configured: set MEGASR_REDIS_URL, or run `megasr serve` for local mode"
        )
    return Redis.from_url(
        settings.redis_url,
        socket_connect_timeout=5,
        socket_timeout=socket_timeout,
        health_check_interval=30,
    )


def get_queue(settings: Settings, connection: Redis | None = None) -> Queue:
    """The one queue upscale jobs go through."""
    return Queue(
        settings.queue_name,
        connection=connection or redis_connection(settings),
        serializer=JOB_SERIALIZER,
        default_timeout=settings.job_timeout_s,
    )


def enqueue_upscale(queue: Queue, payload: JobPayload, settings: Settings) -> Job:
    """Queue ``megasr.worker.tasks.upscale(payload)`` under the payload's job id."""
    return queue.enqueue_call(TASK_FUNC, **upscale_job_options(payload, settings))


def upscale_job_options(payload: JobPayload, settings: Settings) -> dict[str, Any]:
    """RQ's options of an upscale job (``enqueue_call`` and ``Queue.prepare_data`` alike)."""
    return {
        "args": (dict(payload),),
        "job_id": payload["job_id"],
        "timeout": settings.job_timeout_s,
        "result_ttl": settings.result_ttl_s,
        "failure_ttl": settings.result_ttl_s,
        "retry": Retry(max=settings.max_retries) if settings.max_retries else None,
        "description": f"upscale {payload['job_id']}",
    }
