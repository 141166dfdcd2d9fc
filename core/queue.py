"""Queue wiring: the Redis connection, the engines' RQ queues and how an upscale job is enqueued.

Each engine has a queue of its own, ``{queue_name}:{engine}`` (``megasr:realesrgan-x4plus``):
the gateway queues a job on the queue of the engine it runs on, with ``auto`` resolved at
submit time to the default the live workers announce, and a worker listens on the queues of
the engines it serves, so it never takes a job it cannot run. Before any worker has announced
itself the gateway cannot know what ``auto`` means (a worker may serve engines of its own),
so such jobs wait in ``{queue_name}:auto``, which every worker also serves, with its default
engine. ``rq info`` lists one line per queue.

Jobs are serialised as JSON (not pickle), so nothing read back from Redis can run code and
any language can read a job. The gateway and every worker must use :data:`JOB_SERIALIZER`.
"""

from __future__ import annotations

from typing import Any

from redis import Redis
from redis.backoff import ExponentialBackoff
from redis.client import Pipeline
from redis.retry import Retry as RedisRetry
from rq import Queue, Retry
from rq.job import Job
from rq.serializers import JSONSerializer

from megasr.embedded_redis import EmbeddedRedis
from megasr.errors import ServiceUnavailableError
from megasr.jobs import TASK_FUNC, JobPayload
from megasr.settings import Settings

JOB_SERIALIZER = JSONSerializer

__all__ = [
    "AUTO_QUEUE",
    "JOB_SERIALIZER",
    "EmbeddedRedis",
    "EngineQueues",
    "engine_queue_name",
    "enqueue_upscale",
    "get_queue",
    "redis_connection",
]


def redis_connection(
    settings: Settings, socket_timeout: float | None = None, retry_s: float = 0.0
) -> Redis:
    """A connection (pool) to ``settings.redis_url``.

    ``socket_timeout`` bounds each command; the gateway sets one so a hung Redis turns into a
    503 instead of a hung request. Workers leave it None: RQ blocks on the queue on purpose.
    ``retry_s`` keeps a command whose connection broke trying again, with waits doubling up
    to a second, for about that long: a worker rides out a Redis restart mid-batch.
    """
    if not settings.redis_url:
        raise ServiceUnavailableError(
            "no Redis configured: set MEGASR_REDIS_URL, or run `megasr serve` for local mode"
        )
    options = {}
    if retry_s > 0:
        # 0.05 + 0.1 + ... + 0.8 s, then one second per retry.
        options["retry"] = RedisRetry(ExponentialBackoff(cap=1.0, base=0.05), int(retry_s) + 5)
    return Redis.from_url(
        settings.redis_url,
        socket_connect_timeout=5,
        socket_timeout=socket_timeout,
        health_check_interval=30,
        **options,
    )


# The queue of jobs for whatever engine a worker runs by default.
AUTO_QUEUE = "auto"


def engine_queue_name(settings: Settings, engine: str) -> str:
    """The RQ queue of ``engine``'s jobs (:data:`AUTO_QUEUE`: any worker's default)."""
    return f"{settings.queue_name}:{engine}"


def get_queue(
    settings: Settings,
    engine: str,
    connection: Redis | None = None,
    queue_class: type[Queue] = Queue,
) -> Queue:
    """The queue of ``engine``'s jobs."""
    return queue_class(
        engine_queue_name(settings, engine),
        connection=connection or redis_connection(settings),
        serializer=JOB_SERIALIZER,
        default_timeout=settings.job_timeout_s,
    )


class EngineQueues:
    """Every engine's queue, as the gateway and the cleanup see them."""

    def __init__(self, settings: Settings, connection: Redis) -> None:
        self.settings = settings
        self.connection = connection

    def get(self, engine: str) -> Queue:
        return get_queue(self.settings, engine, self.connection)

    def all(self) -> list[Queue]:
        """The queue of every engine that jobs were ever queued for (RQ's set of queues)."""
        prefix = Queue.redis_queue_namespace_prefix + engine_queue_name(self.settings, "")
        keys = sorted(key.decode() for key in self.connection.smembers(Queue.redis_queues_keys))
        return [self.get(key.removeprefix(prefix)) for key in keys if key.startswith(prefix)]

    def depth(self) -> int:
        """Jobs waiting, in every engine's queue together."""
        queues = self.all()
        if not queues:
            return 0
        with self.connection.pipeline(transaction=False) as pipeline:
            for queue in queues:
                pipeline.llen(queue.key)
            return sum(pipeline.execute())


def enqueue_upscale(
    queues: EngineQueues, payload: JobPayload, pipeline: Pipeline | None = None
) -> Job:
    """Queue ``megasr.worker.tasks.upscale(payload)`` under the payload's job id, on the
    queue of its engine (``payload["engine"]``); with ``pipeline``, as part of its
    transaction (nothing is written until the caller executes it)."""
    queue = queues.get(payload["engine"])
    options = upscale_job_options(payload, queues.settings)
    return queue.enqueue_call(TASK_FUNC, pipeline=pipeline, **options)


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
