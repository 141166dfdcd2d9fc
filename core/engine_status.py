"""Which engines the running workers serve, as the workers announce them in Redis.

The gateway never loads a model, so it learns what ``GET /v1/engines`` should list from the
workers: each worker writes ``megasr:engines:{worker_name}`` (JSON, with a TTL it refreshes
with its heartbeat) and adds its name to the set ``megasr:engines``; a worker that dies drops
out when its key expires. Every submit reads this registry, so the read never scans the
keyspace (a SCAN costs the whole keyspace, whatever else shares the Redis): it reads the set,
fetches the named records in one MGET, and removes from the set the names whose record has
expired.

Workers announce the engines they loaded, a family as its variants
(:mod:`megasr.engine_catalog`); the catalog read here folds them back into the family, so a
listing names what a user can ask for, with its description.
"""

from __future__ import annotations

import json
from enum import StrEnum

from pydantic import BaseModel
from redis import Redis

from megasr.engine_catalog import describe, public_name

ENGINES_KEY_PREFIX = "megasr:engines:"
WORKERS_KEY = "megasr:engines"  # the set of worker names that have announced engines


class EngineState(StrEnum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


class EngineInfo(BaseModel):
    """One engine across the fleet: its best state and how many workers are ready with it.

    ``description`` is the catalog's one line (None for an engine of a deployment's own);
    ``variants``, for a family, the engines that run it (one per native scale).
    """

    name: str
    description: str | None = None
    state: EngineState
    workers: int = 0
    detail: str | None = None
    variants: list[str] | None = None


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
    connection.sadd(WORKERS_KEY, worker_name)
    connection.set(ENGINES_KEY_PREFIX + worker_name, json.dumps(record), ex=ttl_s)


def withdraw_engines(connection: Redis, worker_name: str) -> None:
    """Say goodbye on a clean shutdown, so the list is right before the TTL runs out."""
    connection.srem(WORKERS_KEY, worker_name)
    connection.delete(ENGINES_KEY_PREFIX + worker_name)


def read_engines(connection: Redis) -> EngineCatalog:
    """Every engine some live worker announced, ready ones counted, sorted by name; a
    family's variants as one engine, ready on a worker when all of them are."""
    merged: dict[str, EngineInfo] = {}
    default = None
    for record in _live_records(connection):
        default = default or record.get("default")
        details = record.get("details") or {}
        for name, (state, detail, variants) in _fold(record, details).items():
            info = merged.setdefault(
                name, EngineInfo(name=name, description=describe(name), state=state)
            )
            if state is EngineState.READY:
                info.workers += 1
            info.state = _best(info.state, state)
            if info.state is not EngineState.READY and detail is not None:
                info.detail = detail
            if variants:
                info.variants = sorted({*(info.variants or []), *variants})
    engines = sorted(merged.values(), key=lambda info: info.name)
    return EngineCatalog(engines=engines, default=default and public_name(default))


def _fold(
    record: dict, details: dict[str, str]
) -> dict[str, tuple[EngineState, str | None, list[str]]]:
    """One worker's engines by public name: the least ready state of a family's variants,
    a detail of the first one not ready, and the variants (empty for a plain engine)."""
    folded: dict[str, tuple[EngineState, str | None, list[str]]] = {}
    for name, state_text in record.get("engines", {}).items():
        state = EngineState(state_text)
        public = public_name(name)
        earlier, detail, variants = folded.get(public, (EngineState.READY, None, []))
        if state is not EngineState.READY and detail is None:
            detail = details.get(name)
        variants = [*variants, name] if public != name else variants
        folded[public] = (_worst(earlier, state), detail, variants)
    return folded


# Drop a name from the set only if its record is still missing: a worker may announce itself
# again between the MGET and this call, and must not vanish until its next heartbeat.
_FORGET_EXPIRED = """
for i, name in ipairs(ARGV) do
    if redis.call('exists', KEYS[i + 1]) == 0 then redis.call('srem', KEYS[1], name) end
end
"""


def _forget(connection: Redis, names: list[str]) -> None:
    records = [ENGINES_KEY_PREFIX + name for name in names]
    connection.eval(_FORGET_EXPIRED, 1 + len(records), WORKERS_KEY, *records, *names)


def _live_records(connection: Redis) -> list[dict]:
    """The records of the workers in the set, by name; names whose record expired leave it."""
    names = sorted(raw.decode() for raw in connection.smembers(WORKERS_KEY))
    if not names:
        return []
    raws = connection.mget([ENGINES_KEY_PREFIX + name for name in names])
    gone = [name for name, raw in zip(names, raws, strict=True) if raw is None]
    if gone:
        _forget(connection, gone)
    return [json.loads(raw) for raw in raws if raw is not None]


_ORDER = (EngineState.FAILED, EngineState.LOADING, EngineState.READY)


def _best(a: EngineState, b: EngineState) -> EngineState:
    return max(a, b, key=_ORDER.index)


def _worst(a: EngineState, b: EngineState) -> EngineState:
    return min(a, b, key=_ORDER.index)
