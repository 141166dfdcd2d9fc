"""``Idempotency-Key``: the same key and the same request give the first job back.

The first request claims the key atomically (SET NX) with a fingerprint of its payload
(image bytes and parameters); a retry with the same fingerprint gets the claimed job id, a
request with another payload is refused (422). A claim is released if the submission fails,
so a client can retry after an error.

A claim starts short (:data:`CLAIM_TTL_S`) and is renewed by :class:`ClaimKeeper` while its
submission runs; it is kept for the result retention in the very transaction that queues the
job, so a queued job always has its key and a kept key always has its job. A gateway that
dies mid-submission so leaves a claim that lapses within seconds, not one that answers 409
for a day, nor a job whose key lapses and is queued again by the client's retry.
"""

from __future__ import annotations

import hashlib
import json
import threading

from redis import Redis
from redis.client import Pipeline
from redis.exceptions import RedisError

from megasr.errors import InvalidParameterError

MAX_KEY_LENGTH = 255
CLAIM_TTL_S = 30.0


def fingerprint(image: bytes, params: dict) -> str:
    digest = hashlib.sha256(image)
    digest.update(json.dumps(params, sort_keys=True, separators=(",", ":")).encode())
    return digest.hexdigest()


def idempotency_key(tenant: str, key: str) -> str:
    return f"megasr:idempotency:{tenant}:{hashlib.sha256(key.encode()).hexdigest()}"


def claim(
    redis: Redis, tenant: str, key: str, payload_fingerprint: str, job_id: str, ttl_s: float
) -> str | None:
    """Claim ``key`` for ``job_id``; returns the earlier job id when the key was used before."""
    if not key or len(key) > MAX_KEY_LENGTH:
        raise InvalidParameterError(f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} characters")
    record = json.dumps({"fingerprint": payload_fingerprint, "job_id": job_id})
    if redis.set(idempotency_key(tenant, key), record, nx=True, px=int(ttl_s * 1000)):
        return None
    raw = redis.get(idempotency_key(tenant, key))
    if raw is None:  # expired between the two calls: claim again
        return claim(redis, tenant, key, payload_fingerprint, job_id, ttl_s)
    earlier = json.loads(raw)
    if earlier["fingerprint"] != payload_fingerprint:
        raise InvalidParameterError("this Idempotency-Key was used with a different request")
    return str(earlier["job_id"])


def release(redis: Redis, tenant: str, key: str) -> None:
    redis.delete(idempotency_key(tenant, key))


def keep(pipe: Pipeline, tenant: str, key: str, ttl_s: int) -> None:
    """Keep the key for ``ttl_s`` (the result retention), in the transaction ``pipe`` that
    queues its job."""
    pipe.expire(idempotency_key(tenant, key), ttl_s)


class ClaimKeeper:
    """Renews a claim every third of :data:`CLAIM_TTL_S` from a thread, until the block ends."""

    def __init__(self, redis: Redis, tenant: str, key: str) -> None:
        self._redis = redis
        self._name = idempotency_key(tenant, key)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="megasr-idempotency", daemon=True)

    def __enter__(self) -> ClaimKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._done.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._done.wait(CLAIM_TTL_S / 3):
            try:
                self._redis.pexpire(self._name, int(CLAIM_TTL_S * 1000))
            except RedisError:  # the submission's own Redis calls fail and release it
                return
