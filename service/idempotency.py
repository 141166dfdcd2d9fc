"""``Idempotency-Key``: the same key and the same request give the first job back.

The first request claims the key atomically (SET NX) with a fingerprint of its payload
(image bytes and parameters); a retry with the same fingerprint gets the claimed job id, a
request with another payload is refused (422). A claim is released if the submission fails,
so a client can retry after an error.
"""

from __future__ import annotations

import hashlib
import json

from redis import Redis

from megasr.errors import InvalidParameterError

MAX_KEY_LENGTH = 255


def fingerprint(image: bytes, params: dict) -> str:
    digest = hashlib.sha256(image)
    digest.update(json.dumps(params, sort_keys=True, separators=(",", ":")).encode())
    return digest.hexdigest()


def idempotency_key(tenant: str, key: str) -> str:
    return f"megasr:idempotency:{tenant}:{hashlib.sha256(key.encode()).hexdigest()}"


def claim(
    redis: Redis, tenant: str, key: str, payload_fingerprint: str, job_id: str, ttl_s: int
) -> str | None:
    """Claim ``key`` for ``job_id``; returns the earlier job id when the key was used before."""
    if not key or len(key) > MAX_KEY_LENGTH:
        raise InvalidParameterError(f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} characters")
    record = json.dumps({"fingerprint": payload_fingerprint, "job_id": job_id})
    if redis.set(idempotency_key(tenant, key), record, nx=True, ex=ttl_s):
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
