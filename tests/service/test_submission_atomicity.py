"""A submission's Redis writes are one transaction: the ownership record, the RQ job and its
Idempotency-Key kept for the retention are all written, or none is. Before, the key was kept
in a later round trip, so a Redis lost between the two left a queued job whose key lapsed in
30 s, and the client's retry then queued it a second time.

Both tests watch a real Redis: MONITOR for the order of the commands, an ACL that refuses a
command for a transaction that fails."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import httpx
import pytest
from redis import Redis
from service_support import KEY_A, wait_until

from megasr.service import idempotency
from megasr.service.records import record_key

STOP = "megasr-test-monitor-stop"
MARK = "megasr-test-monitor-mark"


@pytest.fixture
def monitor(redis) -> Iterator[list[dict]]:
    """Every command Redis runs (MONITOR on its own connection) until the test ends."""
    commands: list[dict] = []
    watcher = Redis(connection_pool=redis.connection_pool).monitor()
    watcher.__enter__()

    def listen() -> None:
        for command in watcher.listen():
            if STOP in command["command"]:
                return
            commands.append(command)

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    yield commands
    redis.echo(STOP)
    thread.join(10)
    watcher.__exit__(None, None, None)


def submit(gateway, photo: bytes, key: str) -> httpx.Response:
    """One submit on a connection of its own (uvicorn closes one after a 500)."""
    files = {"image": ("a.png", photo, "image/png")}
    headers = {**KEY_A, "Idempotency-Key": key}
    return httpx.post(gateway.url + "/v1/upscale", files=files, headers=headers, timeout=30)


def test_the_record_the_job_and_the_key_are_written_in_one_transaction(gateway, photo, monitor):
    response = submit(gateway, photo, "one-step")
    assert response.status_code == 202
    job_id = response.json()["id"]
    key = idempotency.idempotency_key("tenant-a", "one-step")
    gateway.redis.echo(MARK)
    wait_until(lambda: any(MARK in c["command"] for c in monitor), "MONITOR to catch up")

    exec_at = next(
        i
        for i, c in enumerate(monitor)
        if c["command"] == "EXEC" and any(job_id in d["command"] for d in monitor[:i])
    )
    multi_at = max(i for i, c in enumerate(monitor[:exec_at]) if c["command"] == "MULTI")
    client = monitor[exec_at]["client_port"]
    inside = [c["command"] for c in monitor[multi_at:exec_at] if c["client_port"] == client]
    assert any(c.startswith("HSET") and record_key(job_id) in c for c in inside)
    assert any(c.startswith("RPUSH") and job_id in c for c in inside)  # the job on its queue
    assert any(c.startswith("EXPIRE") and key in c for c in inside)  # the key kept
    # Nothing of the job is written outside it, before it: a failure there leaves nothing.
    before = [c["command"] for c in monitor[:multi_at]]
    assert not any(job_id in c for c in before if not c.startswith("SET"))


def test_a_failed_transaction_leaves_nothing_and_frees_the_key_at_once(
    start_gateway, redis_server, redis, photo
):
    """An ACL user that may not RPUSH: the transaction is refused whole (EXECABORT)."""
    redis.acl_setuser(
        "no-queue",
        enabled=True,
        passwords=["+pw"],
        keys=["*"],
        commands=["+@all", "-rpush", "-lpush"],
    )
    host_port = redis_server.url.split("://", 1)[1]
    gateway = start_gateway(redis_url=f"redis://no-queue:pw@{host_port}")
    try:
        failed = submit(gateway, photo, "retry-me")
        assert failed.status_code >= 500
        assert not redis.exists(idempotency.idempotency_key("tenant-a", "retry-me"))
        assert not redis.keys("megasr:record:*")  # no record without its job
        assert not redis.keys("rq:job:*")
        redis.acl_setuser("no-queue", commands=["+rpush", "+lpush"])

        retried = submit(gateway, photo, "retry-me")  # at once, not after the claim's 30 s
        assert retried.status_code == 202, retried.text
        again = submit(gateway, photo, "retry-me")
        assert again.json()["id"] == retried.json()["id"]
        assert len(redis.keys("rq:job:*")) == 1
    finally:
        redis.acl_deluser("no-queue")
