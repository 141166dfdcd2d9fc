"""What the service costs on top of the work it serves, measured on loopback.

Two comparisons, each against a bare counterpart in the same run:

- **Submits.** ``--requests`` POSTs of one small PNG, from ``--concurrency`` connections that
  each send their next request when the last one is answered, to a bare FastAPI route that
  accepts the upload and to the gateway's ``POST /v1/upscale``. Both apps run under the
  same uvicorn command line in a child process of their own; a few untimed requests warm
  each one up first. The gateway's limits (request rate, jobs in flight, queue depth) are
  off, so it does all of its work for every request; no worker runs, so its jobs just queue.
- **End to end.** ``--images`` photo crops through the engine twice: in this process with
  ``Upscaler`` (decode, upscale, encode; one image after another), then submitted together
  over HTTP to a gateway with one ``megasr worker`` child process, each job polled until it
  is done and its result downloaded. Both sides load the engine the way a worker does and
  use the same tile size (``--tile``, default the image side, so both run the same tiles).

Overhead (time) is the bare throughput over the service's; overhead (CPU) compares the CPU
seconds per item of the processes doing the work (user + system), which other work sharing
the CPU disturbs less than wall time. Everything listens on 127.0.0.1 only, is bounded by
counts and deadlines, and stops by itself.

    .venv/bin/python bench/service_load.py [--requests 500] [--concurrency 4] [--images 4]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, TypeVar

import httpx
import numpy as np
import psutil
from fastapi import FastAPI, Form, UploadFile
from fastapi.responses import JSONResponse
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from megasr.client import Client
from megasr.embedded_redis import EmbeddedRedis

BENCH_DIR = Path(__file__).resolve().parent
# The service's parts as children on loopback: the test suite's harness, shared with it.
sys.path.insert(0, str(BENCH_DIR.parent / "tests"))
from loopback import (  # noqa: E402
    ChildServer,
    free_port,
    gateway_command,
    service_env,
    uvicorn_command,
    worker_command,
)

BARE_APP = "service_load:bare_app"  # imported from BENCH_DIR by the child uvicorn
# psutil reads other processes' CPU time from /proc in clock ticks; a short run can take
# less than one tick and read as zero, which says nothing about the true cost.
CPU_TICK_S = 1 / os.sysconf("SC_CLK_TCK")
ENGINE_READY_TIMEOUT_S = 300.0  # loading and warming up real weights on a busy CPU
TABLE_COLUMNS = (
    "measurement",
    "n",
    "seconds",
    "throughput",
    "p50 ms",
    "p90 ms",
    "p99 ms",
    "CPU ms each",
    "overhead (time)",
    "overhead (CPU)",
)


@dataclass(frozen=True)
class LoadConfig:
    """How much work each measurement does; everything is bounded by these counts."""

    requests: int = 500
    concurrency: int = 4
    warmup_requests: int = 10
    images: int = 4
    side: int = 64
    scale: int = 4
    engine: str = "realesrgan-x4plus"
    tile: int | None = None  # None: the image side
    poll_interval_s: float = 0.2
    job_timeout_s: float = 300.0

    @property
    def engine_tile(self) -> int:
        return self.side if self.tile is None else self.tile


@dataclass(frozen=True)
class Row:
    """One measurement: ``count`` items in ``seconds`` of wall time and ``cpu_s`` of CPU time
    in the processes doing the work, with each item's latency."""

    measurement: str
    count: int
    seconds: float
    cpu_s: float
    unit: str  # "submits/s" or "images/min"
    latencies_s: tuple[float, ...]
    baseline: Row | None = None  # the bare counterpart

    @property
    def throughput(self) -> float:
        per_second = self.count / self.seconds
        return per_second * 60 if self.unit == "images/min" else per_second

    @property
    def cpu_s_each(self) -> float:
        return self.cpu_s / self.count

    @property
    def cpu_measured(self) -> bool:
        """Whether the CPU time reached the clock's resolution at all."""
        return self.cpu_s >= CPU_TICK_S

    @property
    def overhead(self) -> float | None:
        """How many times longer the same work takes than on the bare counterpart."""
        return None if self.baseline is None else self.baseline.throughput / self.throughput

    @property
    def cpu_overhead(self) -> float | None:
        """How many times more CPU the same work takes: steadier than wall time on a CPU that
        other work shares. None without a baseline, or when either side stayed under one
        clock tick (then there is no ratio to give)."""
        if self.baseline is None or not (self.cpu_measured and self.baseline.cpu_measured):
            return None
        return self.cpu_s_each / self.baseline.cpu_s_each


@dataclass
class Report:
    rows: list[Row]
    notes: list[str] = field(default_factory=list)


class Stopwatch:
    """Wall time, and CPU time (user + system) of ``pids``, over a ``with`` block."""

    def __init__(self, pids: Sequence[int]) -> None:
        self.processes = [psutil.Process(pid) for pid in pids]
        self.seconds = self.cpu_s = 0.0

    def __enter__(self) -> Stopwatch:
        self._cpu_start = self._cpu()
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.seconds = time.perf_counter() - self._start
        self.cpu_s = self._cpu() - self._cpu_start

    def _cpu(self) -> float:
        return sum(sum(process.cpu_times()[:2]) for process in self.processes)


# -- the bare counterparts -----------------------------------------------------------------


def bare_app() -> FastAPI:
    """The floor: a FastAPI route that accepts the same upload and answers 202, no more."""
    app = FastAPI()

    @app.post("/v1/upscale", status_code=202)
    async def upload(image: UploadFile, scale: Annotated[float, Form()] = 4.0) -> JSONResponse:
        data = await image.read()
        job_id = secrets.token_urlsafe(16)
        body = {"id": job_id, "bytes": len(data), "scale": scale}
        return JSONResponse(body, status_code=202, headers={"Location": f"/v1/jobs/{job_id}"})

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def bare_engine_row(images: Sequence[bytes], config: LoadConfig) -> tuple[Row, int]:
    """The images through the engine in this process: decode, upscale, encode, one by one;
    also the engine's tile side.

    The engine is loaded and warmed up as a worker does it, with the worker's settings (this
    process's environment plus the engine and tile), and dropped at the end.
    """
    from megasr.imaging.decode import decode_image
    from megasr.imaging.encode import encode_image
    from megasr.imaging.image import ImageLimits
    from megasr.imaging.sizing import OutputSize
    from megasr.model.upscaler import Upscaler
    from megasr.settings import Settings
    from megasr.worker.engines import EnginePool

    settings = Settings(worker_engines=[config.engine], tile=config.engine_tile)
    engine = EnginePool(settings).load().get("auto").engine
    upscaler = Upscaler(engine, batch_size=settings.max_batch_tiles)
    limits = ImageLimits(settings.max_upload_bytes, settings.max_input_pixels)
    latencies = []
    with Stopwatch([os.getpid()]) as watch:
        for data in images:
            begun = time.perf_counter()
            image = decode_image(data, limits)
            out = upscaler.upscale(image, OutputSize(scale=config.scale))
            encode_image(out.rgb, out.alpha, "png", None, out.bit_depth, out.grayscale)
            latencies.append(time.perf_counter() - begun)
    row = Row(
        "bare engine in-process (`Upscaler`)",
        len(images),
        watch.seconds,
        watch.cpu_s,
        "images/min",
        tuple(latencies),
    )
    return row, engine.tile_spec.size


# -- submits -------------------------------------------------------------------------------


def measure_submits(
    redis: EmbeddedRedis, root: Path, config: LoadConfig, env: dict[str, str]
) -> Report:
    """Submits per second and latencies: the bare upload route, then the gateway."""
    env = service_env(env, redis.url, root / "submits", queue="bench-submits")
    image = photo_crops(1, config.side)[0]
    with ExitStack() as stack:
        bare = stack.enter_context(_bare_server(env, root / "bare.log"))
        gateway = stack.enter_context(_gateway(env, root / "gateway-submits.log"))
        bare.wait_ready()
        gateway.wait_ready()
        baseline = _submit_row("bare FastAPI upload route", bare, [], image, config)
        measured = _submit_row("gateway `POST /v1/upscale`", gateway, [redis], image, config)
    note = (
        f"submits: {config.requests} timed requests per server after {config.warmup_requests} "
        f"untimed, each a {config.side}x{config.side} PNG of {len(image)} bytes; the gateway "
        "with auth and limits off and no worker (its jobs stay queued); CPU is the server's "
        "(and Redis's, for the gateway)"
    )
    return Report([baseline, _with_baseline(measured, baseline)], [note])


def _submit_row(
    name: str, server: ChildServer, helpers: list[EmbeddedRedis], image: bytes, config: LoadConfig
) -> Row:
    asyncio.run(_post_images(server.url, image, config.warmup_requests, config))
    pids = [server.process.pid, *(helper.process.pid for helper in helpers)]
    with Stopwatch(pids) as watch:
        latencies = asyncio.run(_post_images(server.url, image, config.requests, config))
    return Row(
        f"{name}, {config.concurrency} connections",
        config.requests,
        watch.seconds,
        watch.cpu_s,
        "submits/s",
        latencies,
    )


async def _post_images(url: str, image: bytes, count: int, config: LoadConfig) -> tuple[float, ...]:
    """``count`` POSTs from ``config.concurrency`` closed loops; the latency of each."""
    limits = httpx.Limits(max_connections=config.concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:

        async def post() -> float:
            begun = time.perf_counter()
            response = await client.post(
                "/v1/upscale",
                files={"image": ("crop.png", image, "image/png")},
                data={"scale": str(config.scale)},
            )
            if response.status_code != 202:
                raise RuntimeError(f"{url} answered {response.status_code}: {response.text}")
            return time.perf_counter() - begun

        async def connection(posts: int) -> list[float]:
            return [await post() for _ in range(posts)]

        shares = [len(range(i, count, config.concurrency)) for i in range(config.concurrency)]
        per_connection = await asyncio.gather(*(connection(posts) for posts in shares))
    return tuple(latency for latencies in per_connection for latency in latencies)


# -- end to end ----------------------------------------------------------------------------


def measure_end_to_end(
    redis: EmbeddedRedis, root: Path, config: LoadConfig, env: dict[str, str]
) -> Report:
    """Images per minute: the bare engine in this process, then HTTP + queue + one worker."""
    env = service_env(env, redis.url, root / "e2e", queue="bench-e2e")
    env["MEGASR_WORKER_ENGINES"] = json.dumps([config.engine])
    env["MEGASR_TILE"] = str(config.engine_tile)
    images = photo_crops(config.images, config.side)
    baseline, tile = bare_engine_row(images, config)  # before the worker starts: no contention
    with ExitStack() as stack:
        worker = stack.enter_context(_worker(env, root / "worker.log"))
        gateway = stack.enter_context(_gateway(env, root / "gateway-e2e.log"))
        gateway.wait_ready()
        worker.wait_ready(ENGINE_READY_TIMEOUT_S)
        calls_before, tiles_before = engine_calls(worker.url)
        pids = [worker.process.pid, gateway.process.pid, redis.process.pid]
        with Stopwatch(pids) as watch:
            latencies = _through_the_service(gateway.url, images, config)
        calls_after, tiles_after = engine_calls(worker.url)
    calls, tiles = calls_after - calls_before, tiles_after - tiles_before
    measured = Row(
        "HTTP + queue + 1 worker (`megasr worker`)",
        len(images),
        watch.seconds,
        watch.cpu_s,
        "images/min",
        latencies,
        baseline,
    )
    notes = [
        f"end to end: {config.images} images of {config.side}x{config.side} -> x{config.scale}, "
        f"engine `{config.engine}` with {tile}-pixel tiles; the worker ran {tiles:g} tiles in "
        f"{calls:g} engine calls, the bare engine {config.images} calls (one per image); CPU is "
        "this process's for the bare engine, the worker's, gateway's and Redis's for the service"
    ]
    return Report([baseline, measured], notes)


def _through_the_service(
    url: str, images: Sequence[bytes], config: LoadConfig
) -> tuple[float, ...]:
    """Submit every image at once; each is polled until done, then its result downloaded."""
    expected = (config.side * config.scale, config.side * config.scale)

    def one(data: bytes) -> float:
        begun = time.perf_counter()
        with Client(url) as client:
            job = client.submit(data, scale=config.scale)
            client.wait(
                job.id, poll_interval_s=config.poll_interval_s, timeout_s=config.job_timeout_s
            )
            result = client.download(job.id)
        if image_size(result) != expected:
            raise RuntimeError(f"job {job.id} gave {image_size(result)}, not {expected}")
        return time.perf_counter() - begun

    with ThreadPoolExecutor(len(images)) as pool:
        return tuple(pool.map(one, images))


def engine_calls(worker_url: str) -> tuple[float, float]:
    """(engine calls, tiles) so far, from the worker's batch-size histogram."""
    text = httpx.get(worker_url + "/metrics", timeout=10).text
    samples = {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "megasr_batch_size_tiles"
        for sample in family.samples
    }
    return samples["megasr_batch_size_tiles_count"], samples["megasr_batch_size_tiles_sum"]


# -- the run -------------------------------------------------------------------------------


def run(config: LoadConfig, env: dict[str, str] | None = None) -> Report:
    """Both comparisons on one embedded Redis in a temporary folder; nothing is left running."""
    env = dict(os.environ if env is None else env)
    with tempfile.TemporaryDirectory(prefix="megasr-service-load-") as folder:
        root = Path(folder)
        with EmbeddedRedis(root / "redis") as redis:
            submits = measure_submits(redis, root, config, env)
            end_to_end = measure_end_to_end(redis, root, config, env)
    return Report(submits.rows + end_to_end.rows, submits.notes + end_to_end.notes)


def _bare_server(env: dict[str, str], log: Path) -> ChildServer:
    port = free_port()
    return ChildServer(uvicorn_command(BARE_APP, port, BENCH_DIR), env, port, log, "/healthz")


def _gateway(env: dict[str, str], log: Path) -> ChildServer:
    """The gateway under the same uvicorn options as the bare app."""
    port = free_port()
    return ChildServer(gateway_command(port), env, port, log)


def _worker(env: dict[str, str], log: Path) -> ChildServer:
    port = free_port()
    return ChildServer(worker_command(port), env, port, log)


def _with_baseline(row: Row, baseline: Row) -> Row:
    return Row(
        row.measurement, row.count, row.seconds, row.cpu_s, row.unit, row.latencies_s, baseline
    )


# -- inputs and output ---------------------------------------------------------------------


def photo_crops(count: int, side: int) -> list[bytes]:
    """``count`` different ``side``-pixel crops of a real photograph, as PNG bytes."""
    from skimage import data

    photo = data.coffee()  # 400 x 600, CC0
    rows, cols = photo.shape[0] - side, photo.shape[1] - side
    crops = []
    for i in range(count):
        top, left = (37 * i) % rows, (101 * i + 150) % cols
        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(photo[top : top + side, left : left + side])).save(
            buffer, "PNG"
        )
        crops.append(buffer.getvalue())
    return crops


def image_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        return image.size


def markdown_table(rows: Sequence[Row]) -> str:
    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|---|" + "---:|" * (len(TABLE_COLUMNS) - 1)]
    for row in rows:
        p50, p90, p99 = np.percentile(np.asarray(row.latencies_s) * 1000, [50, 90, 99])
        cells = [
            row.measurement,
            str(row.count),
            f"{row.seconds:.2f}",
            f"{row.throughput:.1f} {row.unit}",
            *(f"{value:.1f}" for value in (p50, p90, p99)),
            _cpu_ms_each(row),
            _ratio(row.overhead, row),
            _ratio(row.cpu_overhead, row),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _cpu_ms_each(row: Row) -> str:
    if row.cpu_measured:
        return f"{row.cpu_s_each * 1000:.1f}"
    return f"< {CPU_TICK_S / row.count * 1000:.1f}"  # under one tick in all


def _ratio(value: float | None, row: Row) -> str:
    if value is not None:
        return f"{value:.2f}x"
    return "baseline" if row.baseline is None else "n/a (under one CPU tick)"


def machine_description() -> str:
    import torch

    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in subprocess.run(
                ["lscpu"], capture_output=True, text=True
            ).stdout.splitlines()
            if line.startswith("Model name:")
        ),
        platform.processor() or "unknown CPU",
    )
    python = platform.python_version()
    return f"{model}, {os.cpu_count()} cores, torch {torch.__version__}, Python {python}"


T = TypeVar("T")


def load_average() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def on_record(measure: Callable[[], T]) -> T:
    """``measure()`` between the lines every service bench starts with: the machine, and the
    load average before and after with the time it took (other work skews timings)."""
    print(f"- machine: {machine_description()}")
    print(f"- load average (1, 5, 15 min) before: {load_average()}", flush=True)
    started = time.perf_counter()
    result = measure()
    took = time.perf_counter() - started
    print(f"- load average after: {load_average()}; the run took {took:.0f} s")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    defaults = LoadConfig()
    parser.add_argument(
        "--requests", type=int, default=defaults.requests, help="timed submits per server"
    )
    parser.add_argument(
        "--concurrency", type=int, default=defaults.concurrency, help="client connections"
    )
    parser.add_argument("--images", type=int, default=defaults.images, help="images end to end")
    parser.add_argument("--side", type=int, default=defaults.side, help="image side in pixels")
    parser.add_argument("--engine", default=defaults.engine, help="engine name or module:Class")
    parser.add_argument(
        "--tile",
        type=int,
        default=None,
        help="engine tile side (default: --side; 0 = the engine's)",
    )
    args = parser.parse_args(argv)
    if min(args.requests, args.concurrency, args.images, args.side) < 1:
        parser.error("--requests, --concurrency, --images and --side must be 1 or more")
    config = LoadConfig(
        requests=args.requests,
        concurrency=args.concurrency,
        images=args.images,
        side=args.side,
        engine=args.engine,
        tile=args.tile,
    )
    report = on_record(lambda: run(config))
    for note in report.notes:
        print(f"- {note}")
    print()
    print(markdown_table(report.rows), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
