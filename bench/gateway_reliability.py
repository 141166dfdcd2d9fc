"""The gateway under two loads the reliability promises are about (docs/reliability.md).

- **Submits with a crowded Redis.** ``--requests`` POSTs of one small PNG from
  ``--concurrency`` connections to each of two gateway child processes, one on an empty Redis,
  one on a Redis holding ``--filler-keys`` unrelated keys (another application sharing the
  server), in ``--rounds`` alternating rounds. The
  engine registry every submit reads must not cost more with them. Beside it, in this
  process, the registry read itself with both Redis contents, and the read the gateway used to
  do (a SCAN of the keyspace for the workers' keys) for comparison.
- **Memory under large uploads.** ``--uploads`` concurrent uploads of one ~40 MP JPEG to a
  fresh gateway child process; its peak resident memory (VmHWM) after them, against its
  memory before. Beside it, a child process that does what the gateway used to do with each
  upload, a full decode to float32 (``decode_image``), as many at once as the machine has
  cores.

Everything listens on 127.0.0.1 only and stops by itself.

    .venv/bin/python bench/gateway_reliability.py [--requests 300] [--concurrency 4]
        [--filler-keys 100000] [--uploads 8] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

import httpx
import numpy as np
from PIL import Image
from redis import Redis
from service_load import (
    LoadConfig,
    _gateway,
    _post_images,
    on_record,
    photo_crops,
    service_env,
)

from megasr.embedded_redis import EmbeddedRedis
from megasr.engine_status import ENGINES_KEY_PREFIX, EngineState, publish_engines, read_engines

MEBI = 1024 * 1024
LARGE_SIDE = (7700, 5190)  # 39.96 MP, under the default 40 MP limit


def submits_per_second(url: str, image: bytes, config: LoadConfig) -> float:
    asyncio.run(_post_images(url, image, config.warmup_requests, config))
    started = time.perf_counter()
    asyncio.run(_post_images(url, image, config.requests, config))
    return config.requests / (time.perf_counter() - started)


def registry_reads_per_second(redis: Redis, read, seconds: float = 1.0) -> float:
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        read(redis)
        count += 1
    return count / (time.perf_counter() - started)


def scan_read(redis: Redis) -> list:
    """What the gateway did before: SCAN the whole keyspace for the workers' records."""
    keys = sorted(redis.scan_iter(match=ENGINES_KEY_PREFIX + "*", count=100))
    return redis.mget(keys) if keys else []


def fill(redis: Redis, count: int) -> None:
    with redis.pipeline(transaction=False) as pipe:
        for index in range(count):
            pipe.set(f"other-app:session:{index}", "x" * 32)
            if index % 10_000 == 9_999:
                pipe.execute()
        pipe.execute()


def measure_submits(root: Path, config: LoadConfig, filler_keys: int, rounds: int) -> list[str]:
    """Two Redis servers, one empty and one with ``filler_keys`` unrelated keys, each with a
    gateway; timed in alternating rounds so a change in the machine's load hits both."""
    image = photo_crops(1, config.side)[0]
    labels = ("empty Redis", f"{filler_keys} unrelated keys")
    rates: dict[str, list[float]] = {label: [] for label in labels}
    reads: dict[str, tuple[float, float]] = {}
    with ExitStack() as stack:
        gateways = {}
        for index, label in enumerate(labels):
            server = stack.enter_context(EmbeddedRedis(root / f"redis-{index}"))
            redis = Redis.from_url(server.url)
            stack.callback(redis.close)
            fill(redis, filler_keys if index else 0)
            publish_engines(redis, "bench-worker", {"realesrgan-x4plus": EngineState.READY}, 3600)
            env = service_env(dict(os.environ), server.url, root / f"data-{index}", "bench")
            gateway = stack.enter_context(_gateway(env, root / f"gateway-{index}.log"))
            gateways[label] = (gateway, redis)
        for gateway, _ in gateways.values():
            gateway.wait_ready()
        for _ in range(rounds):
            for label, (gateway, _) in gateways.items():
                rates[label].append(submits_per_second(gateway.url, image, config))
        for label, (_, redis) in gateways.items():
            reads[label] = (
                registry_reads_per_second(redis, read_engines),
                registry_reads_per_second(redis, scan_read),
            )
    medians = {label: float(np.median(values)) for label, values in rates.items()}
    lines = [
        "| Redis holds | submits/s (median) | rounds | registry reads/s | SCAN reads/s (before) |",
        "|---|---|---|---|---|",
    ]
    for label in labels:
        rounds_text = ", ".join(f"{rate:.0f}" for rate in rates[label])
        read, scan = reads[label]
        lines.append(
            f"| {label} | {medians[label]:.0f} | {rounds_text} | {read:.0f} | {scan:.0f} |"
        )
    empty, crowded = labels
    lines.append(
        f"\nsubmits/s crowded / empty: {medians[crowded] / medians[empty]:.2f} "
        f"({rounds} alternating rounds of {config.requests} timed submits of a {config.side} px "
        f"PNG, {config.concurrency} connections, auth and limits off)"
    )
    return lines


def large_jpeg() -> bytes:
    photo = photo_crops(1, 640)[0]
    image = (
        Image.open(io.BytesIO(photo)).convert("RGB").resize(LARGE_SIDE, Image.Resampling.BICUBIC)
    )
    noise = np.random.default_rng(0).integers(-12, 13, (LARGE_SIDE[1], LARGE_SIDE[0], 3))
    pixels = np.clip(np.asarray(image, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=92)
    return buffer.getvalue()


def peak_rss_mib(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process in MiB: now, and the peak since it started."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) / 1024
    return fields["VmRSS"], fields["VmHWM"]


async def post_concurrently(url: str, data: bytes, count: int) -> list[int]:
    async with httpx.AsyncClient(base_url=url, timeout=300) as client:

        async def post() -> int:
            response = await client.post(
                "/v1/upscale",
                files={"image": ("large.jpg", data, "image/jpeg")},
                data={"scale": "2"},
            )
            return response.status_code

        return list(await asyncio.gather(*(post() for _ in range(count))))


# The old gateway check, in a fresh process; VmHWM (not getrusage, whose peak a child
# inherits from its parent across fork and exec) is this process's own peak.
OLD_PATH = """
import sys
from concurrent.futures import ThreadPoolExecutor
from megasr.imaging.decode import decode_image
from megasr.imaging.image import ImageLimits
def rss():
    lines = open("/proc/self/status").read().splitlines()
    return {k: int(v.split()[0]) / 1024 for k, _, v in (l.partition(":") for l in lines)
            if k in ("VmRSS", "VmHWM")}
data = open(sys.argv[1], "rb").read()
count, workers = int(sys.argv[2]), int(sys.argv[3])
before = rss()["VmRSS"]
limits = ImageLimits(60 * 2**20, 40_000_000)
with ThreadPoolExecutor(workers) as pool:
    list(pool.map(lambda _: decode_image(data, limits).width, range(count)))
print(before, rss()["VmHWM"])
"""


def measure_memory(root: Path, uploads: int) -> list[str]:
    data = large_jpeg()
    path = root / "large.jpg"
    path.write_bytes(data)
    with EmbeddedRedis(root / "redis-memory") as server:
        env = service_env(dict(os.environ), server.url, root / "memory", "bench-memory")
        with ExitStack() as stack:
            gateway = stack.enter_context(_gateway(env, root / "gateway-memory.log"))
            gateway.wait_ready()
            before, _ = peak_rss_mib(gateway.process.pid)
            started = time.perf_counter()
            statuses = asyncio.run(post_concurrently(gateway.url, data, uploads))
            took = time.perf_counter() - started
            _, peak = peak_rss_mib(gateway.process.pid)
    old = subprocess.run(
        [sys.executable, "-c", OLD_PATH, str(path), str(uploads), str(os.cpu_count() or 1)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    old_before, old_peak = (float(value) for value in old.stdout.split())
    megapixels = LARGE_SIDE[0] * LARGE_SIDE[1] / 1e6
    return [
        f"{uploads} concurrent uploads of a {megapixels:.1f} MP JPEG ({len(data) / MEBI:.1f} MiB), "
        f"answers {sorted(set(statuses))}, all answered in {took:.1f} s",
        "",
        "| process | RSS before, MiB | peak RSS, MiB | peak - before, MiB |",
        "|---|---|---|---|",
        f"| gateway (header checks) | {before:.0f} | {peak:.0f} | {peak - before:.0f} |",
        f"| full float32 decodes, {os.cpu_count()} at a time (the gateway before) "
        f"| {old_before:.0f} | {old_peak:.0f} | {old_peak - old_before:.0f} |",
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300, help="timed submits per run")
    parser.add_argument("--concurrency", type=int, default=4, help="client connections")
    parser.add_argument("--filler-keys", type=int, default=100_000, help="unrelated keys")
    parser.add_argument("--uploads", type=int, default=8, help="concurrent large uploads")
    parser.add_argument("--rounds", type=int, default=3, help="alternating submit rounds")
    args = parser.parse_args(argv)
    config = LoadConfig(requests=args.requests, concurrency=args.concurrency)

    def measure() -> tuple[list[str], list[str]]:
        with tempfile.TemporaryDirectory(prefix="megasr-reliability-") as folder:
            root = Path(folder)
            return (
                measure_submits(root, config, args.filler_keys, args.rounds),
                measure_memory(root, args.uploads),
            )

    submits, memory = on_record(measure)
    print()
    print("\n".join(submits))
    print()
    print("\n".join(memory))
    return 0


if __name__ == "__main__":
    sys.exit(main())
