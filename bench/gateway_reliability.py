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
- **The upload caps.** ``--cap-factor`` x the upload cap of 48 MiB PNGs at once, each sent
  again after a 503 until accepted, to a gateway at its default caps and to one with the
  caps lifted; each one's VmHWM against its idle RSS in the same run, and the stated bound.
- **Slow clients.** A normal client's submit latency (p50/p90/p99) alone and beside
  ``--slow`` clients that trickle their bodies and reconnect whenever cut, in ``--rounds``
  alternating rounds of ``--slow-submits`` on one gateway at its default settings.

Everything listens on 127.0.0.1 only and stops by itself.

    .venv/bin/python bench/gateway_reliability.py [--sections submits,memory,upload-cap,...]
        [--requests 300] [--concurrency 4] [--filler-keys 100000] [--uploads 8] [--rounds 3]
        [--cap-factor 4] [--slow 32] [--slow-submits 100]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
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

from megasr.client import Client
from megasr.embedded_redis import EmbeddedRedis
from megasr.engine_status import ENGINES_KEY_PREFIX, EngineState, publish_engines, read_engines
from megasr.errors import ServiceUnavailableError
from megasr.settings import Settings

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from loopback import wait_until  # the tests' harness, as service_load uses it

MEBI = 1024 * 1024
LARGE_SIDE = (7700, 5190)  # 39.96 MP, under the default 40 MP limit
SECTIONS = ("submits", "memory", "upload-cap", "slow-clients")
CAP_PNG_SIDE = 4096
CAP_ATTEMPTS = 200  # an upload is sent at most this often before the bench gives up on it
ANSWER_TIMEOUT_S = 600.0
UNCAPPED_UPLOADS = 24
# The stated bound on the gateway's memory: what it holds idle, plus each reserved byte once
# (the image, read from its spool to be checked and stored) with room for copies in flight,
# plus a fixed allowance for connections, parser buffers and the allocator.
MEMORY_BOUND_FACTOR = 1.5
MEMORY_BOUND_SLACK_MIB = 64
TRICKLE_INTERVAL_S = 0.1
SUBMIT_RETRIES = 5  # megasr.client.Client's default


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


# -- the upload caps under 4x their load ---------------------------------------------------


def large_png(side: int = CAP_PNG_SIDE) -> bytes:
    """Noise stored uncompressed: a PNG as large in bytes as in pixels (48 MiB at 4096 px)."""
    pixels = np.random.default_rng(1).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG", compress_level=0)
    return buffer.getvalue()


async def upload_until_accepted(port: int, data: bytes, count: int) -> Counter:
    """``count`` concurrent uploads of ``data``, each sent again after a 503 (its
    Retry-After) or a connection the gateway closed on it, until accepted; the answers.

    Plain non-blocking sockets over one shared request buffer, written a MiB at a time and
    stopped as soon as an answer comes: the clients' own memory stays small, and a refused
    upload costs the gateway only what it reads before refusing. Not asyncio's streams: a
    write that fails (the gateway answered, closed, and the unread bytes reset the connection)
    closes a stream's transport before it reads the answer the kernel already holds, so a 503
    would be counted as a closed connection and sent again at once."""
    boundary = b"cap-b0undary"
    body = b"".join(
        [
            b"--" + boundary + b'\r\nContent-Disposition: form-data; name="image"; '
            b'filename="large.png"\r\nContent-Type: image/png\r\n\r\n',
            data,
            b"\r\n--" + boundary + b"--\r\n",
        ]
    )
    request = memoryview(
        b"POST /v1/upscale HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: multipart/form-data; boundary=" + boundary + b"\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body) + body
    )
    loop = asyncio.get_running_loop()
    answers: Counter = Counter()

    async def once() -> tuple[str, float]:
        with socket.socket() as sock:
            sock.setblocking(False)
            await loop.sock_connect(sock, ("127.0.0.1", port))
            answer = asyncio.ensure_future(read_head(sock))
            try:
                await send_until_answered(sock, answer)
                # Checking and storing 48 MiB takes a while on a busy machine: wait it out.
                head_lines = (await asyncio.wait_for(answer, ANSWER_TIMEOUT_S)).split("\r\n")
            except (OSError, TimeoutError):
                return "closed mid-upload", 1.0
            finally:
                await settle(answer)
        status = head_lines[0].split(" ")[1]
        fields = dict(line.lower().split(": ", 1) for line in head_lines[1:] if ": " in line)
        return status, float(fields.get("retry-after", "1"))

    async def read_head(sock: socket.socket) -> str:
        """The answer's status line and headers; OSError if the connection ends first."""
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = await loop.sock_recv(sock, 65536)
            if not chunk:
                raise ConnectionResetError("closed before an answer")
            received += chunk
        return received.split(b"\r\n\r\n", 1)[0].decode("latin-1")

    async def send_until_answered(sock: socket.socket, answer: asyncio.Future) -> None:
        for start in range(0, len(request), MEBI):
            sent = asyncio.ensure_future(loop.sock_sendall(sock, request[start : start + MEBI]))
            await asyncio.wait({sent, answer}, return_when=asyncio.FIRST_COMPLETED)
            if not sent.done():  # answered (a 503) while the gateway reads no more
                await settle(sent)
                return
            if sent.exception() is not None or answer.done():  # closed on us: read the answer
                return

    async def upload() -> None:
        for _ in range(CAP_ATTEMPTS):
            status, retry_after_s = await once()
            answers[status] += 1
            if status not in ("503", "closed mid-upload"):
                return
            await asyncio.sleep(retry_after_s)

    await asyncio.gather(*(upload() for _ in range(count)))
    return answers


async def settle(future: asyncio.Future) -> None:
    """Cancel ``future`` and wait until it has stopped using its socket (before it closes)."""
    future.cancel()
    with contextlib.suppress(asyncio.CancelledError, OSError):
        await future


def measure_upload_cap(root: Path, factor: int) -> list[str]:
    """A gateway at its default caps, ``factor`` x its upload cap of 48 MiB PNGs at once;
    beside it, one with the caps lifted, at the load the review measured (24 uploads)."""
    data = large_png()
    defaults = Settings.model_fields
    cap = defaults["max_concurrent_uploads"].default
    bytes_cap = defaults["max_upload_bytes_in_flight"].default
    runs = [
        ("default caps", {}, factor * cap),
        (
            "caps lifted (as before)",
            {
                "MEGASR_MAX_CONCURRENT_UPLOADS": "1000",
                "MEGASR_MAX_UPLOAD_BYTES_IN_FLIGHT": str(2**40),
            },
            UNCAPPED_UPLOADS,
        ),
    ]
    rows = []
    with EmbeddedRedis(root / "redis-cap") as server:
        for index, (label, extra, uploads) in enumerate(runs):
            env = service_env(dict(os.environ), server.url, root / f"cap-{index}", "bench-cap")
            env["MEGASR_MAX_UPLOAD_BYTES"] = str(len(data) + MEBI)
            env.update(extra)
            with _gateway(env, root / f"gateway-cap-{index}.log") as gateway:
                gateway.wait_ready()
                asyncio.run(post_concurrently(gateway.url, photo_crops(1, 64)[0], 1))  # warm
                idle, _ = peak_rss_mib(gateway.process.pid)
                started = time.perf_counter()
                answers = asyncio.run(upload_until_accepted(gateway.port, data, uploads))
                took = time.perf_counter() - started
                _, peak = peak_rss_mib(gateway.process.pid)
            rows.append((label, uploads, idle, peak, answers, took))
    bound = rows[0][2] + MEMORY_BOUND_FACTOR * bytes_cap / MEBI + MEMORY_BOUND_SLACK_MIB
    lines = [
        f"{len(data) / MEBI:.1f} MiB PNG uploads (4096x4096 noise, uncompressed); caps: "
        f"{cap} uploads, {bytes_cap / MEBI:.0f} MiB in flight; each upload sent again after a "
        f"503 until accepted; stated bound: idle + {MEMORY_BOUND_FACTOR:g} x the byte cap + "
        f"{MEMORY_BOUND_SLACK_MIB} MiB = {bound:.0f} MiB",
        "",
        "| gateway | uploads at once | idle RSS, MiB | peak RSS (VmHWM), MiB | peak - idle, MiB "
        "| answers | seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, uploads, idle, peak, answers, took in rows:
        counted = ", ".join(f"{key}: {value}" for key, value in sorted(answers.items(), key=str))
        lines.append(
            f"| {label} | {uploads} | {idle:.0f} | {peak:.0f} | {peak - idle:.0f} | {counted} "
            f"| {took:.0f} |"
        )
    within = "within" if rows[0][3] <= bound else "OVER"
    lines.append(f"\npeak with the default caps: {rows[0][3]:.0f} MiB, {within} the bound")
    return lines


# -- slow clients beside a normal one ------------------------------------------------------


async def trickle_forever(port: int, stop: asyncio.Event, cut: Counter) -> None:
    """A slow client that never gives up: headers and a few bytes, then one byte every
    :data:`TRICKLE_INTERVAL_S`; when the gateway answers or closes, it connects again."""
    head = (
        b"POST /v1/upscale HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: multipart/form-data; boundary=slow\r\nContent-Length: 1000000\r\n\r\n"
        b'--slow\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n'
    )
    while not stop.is_set():
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(head)
            while not stop.is_set():
                try:
                    line = await asyncio.wait_for(reader.readline(), TRICKLE_INTERVAL_S)
                except TimeoutError:
                    writer.write(b"x")
                    await writer.drain()
                    continue
                cut[line.split(b" ")[1].decode() if line else "closed"] += 1
                break
        except OSError:
            cut["reset"] += 1
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()  # gone from the gateway before the next round


def measure_slow_clients(root: Path, slow: int, submits: int, rounds: int) -> list[str]:
    """p50/p99 of a normal client's submits alone and beside ``slow`` trickling clients (more
    than the upload cap), in alternating rounds on one gateway at its default settings."""
    image = photo_crops(1, 64)[0]
    cap = Settings.model_fields["max_concurrent_uploads"].default
    latencies: dict[str, list[float]] = {"alone": [], f"beside {slow} slow clients": []}
    retries: Counter = Counter()
    cut: Counter = Counter()
    with EmbeddedRedis(root / "redis-slow") as server:
        env = service_env(dict(os.environ), server.url, root / "slow", "bench-slow")
        with _gateway(env, root / "gateway-slow.log") as gateway:
            gateway.wait_ready()
            port = int(gateway.url.rsplit(":", 1)[1])
            for _ in range(rounds):
                for label in latencies:
                    with _slow_clients(port, slow if label != "alone" else 0, cut):
                        if label != "alone":
                            _wait_for_uploads(gateway.url, cap)
                        latencies[label] += _timed_submits(gateway.url, image, submits, retries)
                    _wait_for_uploads(gateway.url, 0)  # no slow upload left in the next round
    lines = [
        f"{rounds} alternating rounds of {submits} submits of a 64 px PNG, one after another, by "
        f"`megasr.client.Client` (it waits out a 503's Retry-After); upload cap {cap}; the slow "
        f"clients declare 1 MB and send a byte every {TRICKLE_INTERVAL_S:g} s, connecting again "
        "whenever cut",
        "",
        "| normal client | submits | p50 ms | p90 ms | p99 ms | max ms |",
        "|---|---|---|---|---|---|",
    ]
    for label, values in latencies.items():
        p50, p90, p99 = np.percentile(values, [50, 90, 99]) * 1000
        lines.append(
            f"| {label} | {len(values)} | {p50:.0f} | {p90:.0f} | {p99:.0f} "
            f"| {max(values) * 1000:.0f} |"
        )
    counted = ", ".join(f"{key}: {value}" for key, value in sorted(cut.items()))
    lines.append(
        f"\nthe normal client's submits that waited out a 503 (or a lost connection): "
        f"{retries['waited']}, {retries['waits']} waits in all; that it gave up on after "
        f"{SUBMIT_RETRIES} retries: {retries['gave up']}; "
        f"the slow clients' connections ended by: {counted}"
    )
    return lines


@contextmanager
def _slow_clients(port: int, count: int, cut: Counter) -> Iterator[None]:
    """``count`` :func:`trickle_forever` clients on an event loop of their own, for the block."""
    if not count:
        yield
        return
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    async def run_all() -> None:
        await asyncio.gather(*(trickle_forever(port, stop, cut) for _ in range(count)))

    thread = threading.Thread(target=loop.run_until_complete, args=(run_all(),))
    thread.start()
    try:
        yield
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join()
        loop.close()


def _wait_for_uploads(url: str, count: int) -> None:
    """Until the gateway reports ``count`` uploads in flight (every place taken, or none)."""

    def full() -> bool:
        text = httpx.get(url + "/metrics", timeout=10).text
        return f"megasr_uploads_in_flight {float(count)}" in text

    wait_until(full, f"{count} uploads in flight", timeout_s=60)


def _timed_submits(url: str, image: bytes, count: int, retries: Counter) -> list[float]:
    """Each submit's seconds, its retries included; ``retries`` counts the waits, the submits
    that waited at least once and those the client gave up on (a 503 past its retries)."""
    waits = 0

    def sleep(seconds: float) -> None:
        nonlocal waits
        waits += 1
        time.sleep(seconds)

    latencies = []
    with Client(url, retries=SUBMIT_RETRIES, sleep=sleep) as client:
        for _ in range(count):
            waits, begun = 0, time.perf_counter()
            try:
                client.submit(image, scale=2)
            except ServiceUnavailableError:
                retries["gave up"] += 1
            latencies.append(time.perf_counter() - begun)
            retries["waits"] += waits
            retries["waited"] += bool(waits)
    return latencies


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300, help="timed submits per run")
    parser.add_argument("--concurrency", type=int, default=4, help="client connections")
    parser.add_argument("--filler-keys", type=int, default=100_000, help="unrelated keys")
    parser.add_argument("--uploads", type=int, default=8, help="concurrent large uploads")
    parser.add_argument("--rounds", type=int, default=3, help="alternating submit rounds")
    parser.add_argument("--cap-factor", type=int, default=4, help="uploads at once / the cap")
    parser.add_argument("--slow", type=int, default=32, help="slow clients (cap: 16)")
    parser.add_argument("--slow-submits", type=int, default=100, help="submits per slow round")
    parser.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help=f"which measurements, comma-separated: {', '.join(SECTIONS)}",
    )
    args = parser.parse_args(argv)
    config = LoadConfig(requests=args.requests, concurrency=args.concurrency)
    chosen = args.sections.split(",")
    sections: dict[str, Callable[[Path], list[str]]] = {
        "submits": lambda root: measure_submits(root, config, args.filler_keys, args.rounds),
        "memory": lambda root: measure_memory(root, args.uploads),
        "upload-cap": lambda root: measure_upload_cap(root, args.cap_factor),
        "slow-clients": lambda root: measure_slow_clients(
            root, args.slow, args.slow_submits, args.rounds
        ),
    }

    def measure() -> list[list[str]]:
        with tempfile.TemporaryDirectory(prefix="megasr-reliability-") as folder:
            return [sections[name](Path(folder)) for name in chosen]

    for lines in on_record(measure):
        print()
        print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
