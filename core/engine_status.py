"""Which engines the running workers serve, as the workers announce them in Redis.

The gateway never loads a model, so it learns what ``GET /v1/engines`` should list from the
workers: each worker writes ``megasr:engines:{worker_name}`` (JSON, with a TTL it refreshes
with its heartbeat), and a worker that dies drops out when its key expires.
"""

from __future__ import annotations

import json
from enum import StrEnum

from pydantic import BaseModel
from redis import Redis

ENGINES_KEY_PREFIX = "megasr:engines:"


class EngineState(StrEnum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


class EngineInfo(BaseModel):
    """One engine across the fleet: its best state and how many workers are ready with it."""

    name: str
    state: EngineState
    workers: int = 0
    detail: str | None = None


class EngineCatalog(BaseModel):
    """What ``GET /v1/engines`` answers; ``default`` is the engine ``auto`` picks."""

    engines: list[EngineInfo]
    default: str | None = None


def publish_engines(
    connection: Redis,
    worker_name: str,
    engines: dict[str, EngineState],
    ttl_s: int,
    default: str | None = None,
    details: dict[str, str] | None = None,
) -> None:
    """Announce (or refresh) this worker's engines; ``default`` is what ``auto`` means here."""
    record = {
        "engines": {name: str(state) for name, state in engines.items()},
        "default": default,
        "details": details or {},
    }
    connection.set(ENGINES_KEY_PREFIX + worker_name, json.dumps(record), ex=ttl_s)


def withdraw_engines(connection: Redis, worker_name: str) -> None:
    """Say goodbye on a clean shutdown, so the list is right before the TTL runs out."""
    connection.delete(ENGINES_KEY_PREFIX + worker_name)


def read_engines(connection: Redis) -> EngineCatalog:
    """Every engine some live worker announced, ready ones counted, sorted by name."""
    merged: dict[str, EngineInfo] = {}
    default = None
    keys = sorted(connection.scan_iter(match=ENGINES_KEY_PREFIX + "*", count=100))
    for raw in connection.mget(keys) if keys else []:
        if raw is None:
            continue
        record = json.loads(raw)
        default = default or record.get("default")
        details = record.get("details") or {}
        for name, state_text in record.get("engines", {}).items():
            state = EngineState(state_text)
            info = merged.setdefault(name, EngineInfo(name=name, state=state))
            if state is EngineState.READY:
                info.workers += 1
            info.state = _best(info.state, state)
            if info.state is not EngineState.READY and name in details:
                info.detail = details[name]
    engines = sorted(merged.values(), key=lambda info: info.name)
    return EngineCatalog(engines=engines, default=default)


def _best(a: EngineState, b: EngineState) -> EngineState:
    order = (EngineState.FAILED, EngineState.LOADING, EngineState.READY)
    return max(a, b, key=order.index)
