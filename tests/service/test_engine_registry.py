"""The engine registry every submit reads: right answers, and no keyspace scan to get them."""

from __future__ import annotations

from redis import Redis

from megasr.engine_status import (
    ENGINES_KEY_PREFIX,
    WORKERS_KEY,
    EngineState,
    publish_engines,
    read_engines,
    withdraw_engines,
)


def command_calls(redis: Redis) -> dict[str, int]:
    return {name: stats["calls"] for name, stats in redis.info("commandstats").items()}


def test_engines_are_merged_across_workers(redis: Redis) -> None:
    publish_engines(redis, "w1", {"a": EngineState.READY, "b": EngineState.LOADING}, 60, "a")
    publish_engines(redis, "w2", {"a": EngineState.READY}, 60, "a")
    publish_engines(redis, "w3", {"b": EngineState.FAILED}, 60, details={"b": "no weights"})

    catalog = read_engines(redis)

    assert catalog.default == "a"
    by_name = {info.name: info for info in catalog.engines}
    assert (by_name["a"].state, by_name["a"].workers) == (EngineState.READY, 2)
    assert (by_name["b"].state, by_name["b"].workers) == (EngineState.LOADING, 0)


def test_a_withdrawn_or_expired_worker_drops_out(redis: Redis) -> None:
    publish_engines(redis, "stays", {"a": EngineState.READY}, 60)
    publish_engines(redis, "leaves", {"b": EngineState.READY}, 60)
    publish_engines(redis, "dies", {"c": EngineState.READY}, 60)
    withdraw_engines(redis, "leaves")
    redis.delete(ENGINES_KEY_PREFIX + "dies")  # what its TTL does when its heartbeats stop

    assert [info.name for info in read_engines(redis).engines] == ["a"]
    assert redis.smembers(WORKERS_KEY) == {b"stays"}  # the dead name was pruned by the read


def test_a_worker_that_announces_itself_again_is_not_pruned(redis: Redis) -> None:
    publish_engines(redis, "back", {"a": EngineState.READY}, 60)
    redis.delete(ENGINES_KEY_PREFIX + "back")
    publish_engines(redis, "back", {"a": EngineState.READY}, 60)

    assert [info.name for info in read_engines(redis).engines] == ["a"]
    assert redis.smembers(WORKERS_KEY) == {b"back"}


def test_the_read_never_scans_the_keyspace(redis: Redis) -> None:
    """SCAN and KEYS cost the whole keyspace, which other applications may share."""
    with redis.pipeline(transaction=False) as pipe:
        for index in range(5000):
            pipe.set(f"someone-else:{index}", "x")
        pipe.execute()
    publish_engines(redis, "w1", {"a": EngineState.READY}, 60)
    redis.config_resetstat()

    assert [info.name for info in read_engines(redis).engines] == ["a"]
    calls = command_calls(redis)
    assert "cmdstat_scan" not in calls and "cmdstat_keys" not in calls
    assert calls["cmdstat_smembers"] == 1 and calls["cmdstat_mget"] == 1
