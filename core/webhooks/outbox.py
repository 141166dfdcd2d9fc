"""The webhook outbox: deliveries waiting in Redis until a receiver takes them, or for good.

A delivery is a hash ``megasr:webhook:{id}`` (URL, event, tenant, job id, body, attempts,
last error) and its id in the sorted set ``megasr:webhooks:{queue}:due``, scored by when it is
next due. Both are written in one step (a script), inside the transaction that writes the
job's end when the caller passes its pipeline, so a process that dies a moment later loses
nothing: whichever process drains the outbox next (every gateway and worker runs a
:class:`~megasr.webhooks.delivery.WebhookDispatcher`) delivers it. Adding an id the outbox
already holds changes nothing, so a job's end told twice (a transaction retried, two
processes deciding the same end) is one delivery with one ``webhook-id``. The queue name
scopes the outbox to one deployment: only processes with its settings (its secrets, its
address policy) deliver its webhooks.

Claiming is atomic (a Lua script): due ids are pushed a lease into the future and their
attempt count goes up, so two drainers never send the same attempt; a drainer that dies
mid-delivery leaves the id to come due again when its lease runs out. Delivery is therefore
at least once: a receiver that answered just before its sender died gets the delivery again,
with the same ``webhook-id``. After the last attempt (or an answer that no retry can change)
the id moves to ``megasr:webhooks:{queue}:dead`` and its hash is kept, with the reason, for
``retention_s``.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

from redis import Redis
from redis.client import Pipeline

RECORD_PREFIX = "megasr:webhook:"

# KEYS: the due set, the record; ARGV: when due, the id, then the record's fields and values.
# Sent as EVAL, never EVALSHA: inside a transaction a script missing from Redis's cache (a
# restart flushes it) would fail alone and let the rest of the transaction commit without it.
_ADD = """
if redis.call('exists', KEYS[2]) == 1 then return 0 end
redis.call('hset', KEYS[2], unpack(ARGV, 3))
redis.call('zadd', KEYS[1], ARGV[1], ARGV[2])
return 1
"""
# KEYS[1] the due set; ARGV: now, the lease's end, how many at most. Returns the claimed ids.
_CLAIM = """
local ids = redis.call('zrangebyscore', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
local claimed = {}
for _, id in ipairs(ids) do
    local record = ARGV[4] .. id
    if redis.call('exists', record) == 1 then
        redis.call('zadd', KEYS[1], ARGV[2], id)
        redis.call('hincrby', record, 'attempts', 1)
        table.insert(claimed, id)
    else
        redis.call('zrem', KEYS[1], id)
    end
end
return claimed
"""
# KEYS: the due set, the record; ARGV: when due, the reason, the id. A delivery that another
# drainer finished meanwhile (its lease ran out under a slow receiver) stays finished.
_RETRY = """
if redis.call('exists', KEYS[2]) == 1 then
    redis.call('hset', KEYS[2], 'last_error', ARGV[2])
    redis.call('zadd', KEYS[1], 'XX', ARGV[1], ARGV[3])
end
"""


def record_key(delivery_id: str) -> str:
    return RECORD_PREFIX + delivery_id


@dataclass(frozen=True)
class Delivery:
    """One webhook as the outbox holds it; ``attempts`` counts the claim in progress."""

    id: str
    url: str
    event: str
    tenant: str
    job_id: str
    body: bytes
    attempts: int
    last_error: str = ""


class WebhookOutbox:
    """The outbox in one Redis."""

    def __init__(self, connection: Redis, queue_name: str) -> None:
        self.connection = connection
        self.due_key = f"megasr:webhooks:{queue_name}:due"
        self.dead_key = f"megasr:webhooks:{queue_name}:dead"
        self._claim = connection.register_script(_CLAIM)
        self._retry = connection.register_script(_RETRY)

    def add(
        self,
        url: str,
        event: str,
        tenant: str,
        job_id: str,
        body: bytes,
        delivery_id: str | None = None,
        client: Pipeline | None = None,
    ) -> str:
        """Queue a delivery, due now, unless ``delivery_id`` is queued already; returns its
        id (the ``webhook-id`` of every attempt; a random one when None). With ``client``
        (a transaction's pipeline) the write joins that transaction and commits with it."""
        delivery_id = delivery_id or "msg_" + secrets.token_urlsafe(16)
        now = time.time()
        fields = {
            "url": url,
            "event": event,
            "tenant": tenant,
            "job_id": job_id,
            "body": body,
            "attempts": 0,
            "created_at": now,
        }
        values = [item for pair in fields.items() for item in pair]
        target = client if client is not None else self.connection
        target.eval(_ADD, 2, self.due_key, record_key(delivery_id), now, delivery_id, *values)
        return delivery_id

    def claim(self, lease_s: float, limit: int) -> list[str]:
        """Up to ``limit`` due ids, each leased for ``lease_s`` and counted as one more attempt."""
        now = time.time()
        ids = self._claim(keys=[self.due_key], args=[now, now + lease_s, limit, RECORD_PREFIX])
        return [raw.decode() if isinstance(raw, bytes) else str(raw) for raw in ids]

    def load(self, delivery_id: str) -> Delivery | None:
        fields = self.connection.hgetall(record_key(delivery_id))
        if not fields:
            return None
        text = {key.decode(): value for key, value in fields.items()}
        return Delivery(
            id=delivery_id,
            url=text["url"].decode(),
            event=text["event"].decode(),
            tenant=text["tenant"].decode(),
            job_id=text["job_id"].decode(),
            body=text["body"],
            attempts=int(text["attempts"]),
            last_error=text.get("last_error", b"").decode(),
        )

    def delivered(self, delivery_id: str) -> None:
        with self.connection.pipeline() as pipe:
            pipe.zrem(self.due_key, delivery_id)
            pipe.delete(record_key(delivery_id))
            pipe.execute()

    def retry_at(self, delivery_id: str, due: float, reason: str) -> None:
        self._retry(keys=[self.due_key, record_key(delivery_id)], args=[due, reason, delivery_id])

    def dead(self, delivery_id: str, reason: str, retention_s: int) -> None:
        """Give up on a delivery: it leaves the due set, its record stays ``retention_s``."""
        now = time.time()
        with self.connection.pipeline() as pipe:
            pipe.zrem(self.due_key, delivery_id)
            pipe.hset(record_key(delivery_id), mapping={"last_error": reason, "dead_at": now})
            pipe.expire(record_key(delivery_id), retention_s)
            pipe.zadd(self.dead_key, {delivery_id: now})
            pipe.zremrangebyscore(self.dead_key, "-inf", now - retention_s)
            pipe.execute()

    def next_due(self) -> float | None:
        """When the earliest delivery comes due (Unix time), or None when none waits."""
        first = self.connection.zrange(self.due_key, 0, 0, withscores=True)
        return float(first[0][1]) if first else None

    def pending(self) -> int:
        return int(self.connection.zcard(self.due_key))

    def dead_count(self) -> int:
        return int(self.connection.zcard(self.dead_key))
