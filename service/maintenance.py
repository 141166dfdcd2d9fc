"""The gateway's background chores: recovering stranded jobs and the storage sweep.

RQ recovers the jobs of a dead worker only when someone cleans its registries; workers do
it between jobs, but a busy or dead fleet does not, so the gateway (never busy for long)
does it on a timer for every engine's queue (:func:`megasr.recovery.maintain_queue`: lapsed
leases, jobs stranded in the intermediate list), and tells the client of a job abandoned on
its last try (webhook ``job.failed``). A Redis lock makes one replica of many do each pass,
and each queue is cleaned under RQ's own maintenance lock, which workers take too. Stored
objects past the retention window are swept far less often (listing a bucket is not free).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from anyio.to_thread import run_sync

from megasr.errors import MegaSRError
from megasr.recovery import maintain_queue, on_abandoned
from megasr.service.context import Gateway

log = logging.getLogger(__name__)

REGISTRY_LOCK = "megasr:maintenance:registries"
SWEEP_LOCK = "megasr:maintenance:sweep"
SWEEP_INTERVAL_S = 3600


async def run_maintenance(gw: Gateway, stop: asyncio.Event) -> None:
    """Clean up every ``maintenance_interval_s`` until ``stop`` is set; never raises."""
    while not stop.is_set():
        try:
            await run_sync(maintain_once, gw)
        except Exception as exc:  # Redis or storage down: try again next time
            log.warning("maintenance pass failed: %s", exc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), gw.settings.maintenance_interval_s)


def maintain_once(gw: Gateway) -> bool:
    """One pass, if no other replica ran one within the interval; True when it ran."""
    interval = max(1, int(gw.settings.maintenance_interval_s))
    if not gw.redis.set(REGISTRY_LOCK, "1", nx=True, ex=interval):
        return False
    handlers = [on_abandoned, gw.notifier.on_abandoned]
    for queue in gw.queues.all():
        maintain_queue(queue, handlers, gw.settings.heartbeat_ttl_s)
    if gw.redis.set(SWEEP_LOCK, "1", nx=True, ex=SWEEP_INTERVAL_S):
        try:
            removed = gw.storage.sweep(retention_window_s(gw))
        except MegaSRError as exc:
            log.warning("storage sweep failed: %s", exc.detail)
        else:
            if removed:
                log.info("removed %d expired objects from storage", removed)
    return True


def retention_window_s(gw: Gateway) -> int:
    """How old an object may get: every try of its job, then the result retention."""
    settings = gw.settings
    return settings.job_timeout_s * (settings.max_retries + 1) + settings.result_ttl_s
