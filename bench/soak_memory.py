"""Resident memory of the gateway and a worker over a long run of jobs: does it stay flat?

``--jobs`` small photo crops go through the whole service on loopback: an embedded Redis,
local storage, the gateway as a child uvicorn process and one ``megasr worker`` child
process. They are submitted over HTTP in waves of ``--in-flight``; each job is polled until
it ends, and every ``--download-every``-th result is downloaded and its size checked, so the
result path runs too. Between waves (nothing in flight), after the first ``--warmup`` jobs and
then every ``--sample-every`` jobs, the resident size (VmRSS) and peak (VmHWM) of the gateway
and the worker are read from ``/proc``. The growth of the peak from the sample after warm-up
to the last one says whether memory leaks per job (the RSS growth is printed beside it).

The default engine is ``worker_engines:TinyEngine`` from ``tests/`` (put on the worker's
``PYTHONPATH``): a real network through the real tile path, cheap enough for 1000 jobs on a
CPU; what is measured is the service's own memory per job (RQ, storage, metrics, webhooks),
which does not depend on the engine's size. ``--engine realesrgan-x4plus`` runs the default
engine instead (about a second per 32 px job here).

Everything listens on 127.0.0.1 only, is bounded by counts and deadlines, and stops by itself;
the exit status is 1 if any job did not succeed.

    .venv/bin/python bench/soak_memory.py [--jobs 1000] [--in-flight 50] [--warmup 100]
        [--sample-every 100] [--download-every 5] [--side 32]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from gateway_reliability import peak_rss_mib
from service_load import (
    ENGINE_READY_TIMEOUT_S,
    _gateway,
    _worker,
    image_size,
    on_record,
    photo_crops,
    service_env,
)

from megasr.client import Client
from megasr.embedded_redis import EmbeddedRedis
from megasr.errors import MegaSRError

TESTS_DIR = Path(__file__).resolve().parent.parent / "tests"
DEFAULT_ENGINE = "worker_engines:TinyEngine"
# Flat: a peak grown by less than this many MiB, or by less than this fraction of the peak
# after warm-up, whichever is larger (``Soak.is_flat`` says why).
FLAT_MIB = 10.0
FLAT_FRACTION = 0.05
TABLE_COLUMNS = (
    "jobs done",
    "gateway RSS MiB",
    "gateway peak MiB",
    "worker RSS MiB",
    "worker peak MiB",
    "seconds",
)


@dataclass(frozen=True)
class SoakConfig:
    jobs: int = 1000
    in_flight: int = 50
    warmup: int = 100
    sample_every: int = 100
    download_every: int = 5
    side: int = 32
    scale: int = 4
    engine: str = DEFAULT_ENGINE
    crops: int = 16  # different inputs, cycled
    poll_interval_s: float = 0.1
    job_timeout_s: float = 300.0


@dataclass(frozen=True)
class Sample:
    """Resident and peak memory (MiB) of the gateway and the worker after ``jobs`` jobs."""

    jobs: int
    gateway_rss: float
    gateway_peak: float
    worker_rss: float
    worker_peak: float
    seconds: float


@dataclass
class Soak:
    config: SoakConfig
    samples: list[Sample] = field(default_factory=list)
    succeeded: int = 0
    downloaded: int = 0
    failures: list[str] = field(default_factory=list)

    @property
    def baseline(self) -> Sample:
        """The first sample after warm-up: start-up, imports and first-call caches are paid."""
        return next(sample for sample in self.samples if sample.jobs >= self.config.warmup)

    def growth(self, process: str, measure: str = "peak") -> tuple[float, float]:
        """(MiB, ratio) of ``process``'s ``measure`` ("rss" or "peak") from the baseline to
        the last sample."""
        first = getattr(self.baseline, f"{process}_{measure}")
        last = getattr(self.samples[-1], f"{process}_{measure}")
        return last - first, last / first

    def is_flat(self, process: str) -> bool:
        """Whether the peak grew by under ``FLAT_MIB`` or ``FLAT_FRACTION`` of the baseline's
        peak, whichever is larger.

        The peak, not the RSS of the moment: a process's RSS moves within a band as glibc's
        malloc arenas and pymalloc's pools are handed back to the kernel or kept (the
        worker's by some 30 MiB between samples, with the Python heap flat), so one sample
        taken low makes the next look like growth. The peak after warm-up already holds that
        band, and a leak pushes it up without bound: 10 KiB per job is 9 MiB over 900 jobs,
        which the bound is meant to catch, and the allocator's noise is not.
        """
        grown, _ = self.growth(process)
        return grown < max(FLAT_MIB, FLAT_FRACTION * getattr(self.baseline, f"{process}_peak"))


def sample(jobs: int, gateway_pid: int, worker_pid: int, started: float) -> Sample:
    gateway_rss, gateway_peak = peak_rss_mib(gateway_pid)
    worker_rss, worker_peak = peak_rss_mib(worker_pid)
    return Sample(
        jobs,
        gateway_rss,
        gateway_peak,
        worker_rss,
        worker_peak,
        time.perf_counter() - started,
    )


def one_job(client: Client, image: bytes, download: bool, config: SoakConfig) -> bool:
    """Submit, poll to the end, maybe download; whether the result was downloaded."""
    job = client.submit(image, scale=config.scale)
    client.wait(job.id, poll_interval_s=config.poll_interval_s, timeout_s=config.job_timeout_s)
    if not download:
        return False
    expected = (config.side * config.scale,) * 2
    size = image_size(client.download(job.id))
    if size != expected:
        raise RuntimeError(f"job {job.id} gave a {size} result, not {expected}")
    return True


def run_wave(
    pool: ThreadPoolExecutor,
    client: Client,
    images: list[bytes],
    first: int,
    count: int,
    soak: Soak,
) -> None:
    """Jobs ``first`` .. ``first + count - 1`` at once; each one's end is counted in ``soak``."""
    config = soak.config

    def job(index: int) -> bool:
        download = index % config.download_every == 0
        return one_job(client, images[index % len(images)], download, config)

    futures = [pool.submit(job, index) for index in range(first, first + count)]
    for index, future in zip(range(first, first + count), futures, strict=True):
        try:
            soak.downloaded += future.result()
            soak.succeeded += 1
        except (MegaSRError, RuntimeError, TimeoutError) as exc:
            soak.failures.append(f"job {index}: {exc}")


def sample_points(config: SoakConfig) -> list[int]:
    """0 (idle, after start-up), the warm-up, then every ``sample_every`` jobs, and the end."""
    points = {0, min(config.warmup, config.jobs), config.jobs}
    points.update(range(config.sample_every, config.jobs, config.sample_every))
    return sorted(point for point in points if point == 0 or point >= config.warmup)


def soak(config: SoakConfig, env: dict[str, str] | None = None) -> Soak:
    """Run the jobs through a fresh service in a temporary folder; nothing is left running."""
    env = dict(os.environ if env is None else env)
    images = photo_crops(config.crops, config.side)
    result = Soak(config)
    with tempfile.TemporaryDirectory(prefix="megasr-soak-") as folder, ExitStack() as stack:
        root = Path(folder)
        redis = stack.enter_context(EmbeddedRedis(root / "redis"))
        env = service_env(env, redis.url, root / "data", queue="bench-soak")
        env["MEGASR_WORKER_ENGINES"] = json.dumps([config.engine])
        env["MEGASR_TILE"] = str(config.side)
        env["PYTHONPATH"] = os.pathsep.join([str(TESTS_DIR), env.get("PYTHONPATH", "")])
        worker = stack.enter_context(_worker(env, root / "worker.log"))
        gateway = stack.enter_context(_gateway(env, root / "gateway.log"))
        gateway.wait_ready()
        worker.wait_ready(ENGINE_READY_TIMEOUT_S)
        pids = (gateway.process.pid, worker.process.pid)
        client = stack.enter_context(Client(gateway.url, timeout_s=60))
        pool = stack.enter_context(ThreadPoolExecutor(config.in_flight))
        started = time.perf_counter()
        done = 0
        for point in sample_points(config):
            while done < point:  # waves up to the next sample point, none across it
                count = min(config.in_flight, point - done)
                run_wave(pool, client, images, done, count, result)
                done += count
            result.samples.append(sample(done, *pids, started))
    return result


def markdown_table(samples: Sequence[Sample]) -> str:
    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|---:|" + "---:|" * (len(TABLE_COLUMNS) - 1)]
    for row in samples:
        cells = [str(row.jobs)]
        cells += [f"{value:.1f}" for value in (row.gateway_rss, row.gateway_peak)]
        cells += [f"{value:.1f}" for value in (row.worker_rss, row.worker_peak)]
        cells.append(f"{row.seconds:.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def summary(result: Soak) -> list[str]:
    """The counts, each process's growth after warm-up, and the verdict."""
    config = result.config
    lines = [
        f"jobs: {config.jobs} submitted, {result.succeeded} succeeded, "
        f"{len(result.failures)} did not; {result.downloaded} results downloaded"
    ]
    for process in ("gateway", "worker"):
        rss, rss_ratio = result.growth(process, "rss")
        peak, peak_ratio = result.growth(process)
        verdict = "flat" if result.is_flat(process) else "NOT flat"
        lines.append(
            f"{process} from {result.baseline.jobs} to {result.samples[-1].jobs} jobs: "
            f"RSS {rss:+.1f} MiB ({rss_ratio:.3f}x), peak {peak:+.1f} MiB ({peak_ratio:.3f}x): "
            f"{verdict} (bound: peak growth under {FLAT_MIB:g} MiB or "
            f"{FLAT_FRACTION:.0%} of the peak after warm-up)"
        )
    return lines + [f"not succeeded: {failure}" for failure in result.failures[:10]]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    defaults = SoakConfig()
    parser.add_argument("--jobs", type=int, default=defaults.jobs, help="jobs in all")
    parser.add_argument("--in-flight", type=int, default=defaults.in_flight, help="jobs a wave")
    parser.add_argument(
        "--warmup", type=int, default=defaults.warmup, help="jobs before the baseline"
    )
    parser.add_argument(
        "--sample-every", type=int, default=defaults.sample_every, help="jobs between samples"
    )
    parser.add_argument(
        "--download-every", type=int, default=defaults.download_every, help="download every n-th"
    )
    parser.add_argument("--side", type=int, default=defaults.side, help="input side in pixels")
    parser.add_argument("--engine", default=defaults.engine, help="engine name or module:Class")
    args = parser.parse_args(argv)
    counts = (args.jobs, args.in_flight, args.warmup, args.sample_every, args.download_every)
    if min(counts) < 1 or args.side < 8:
        parser.error("every count must be 1 or more, and --side 8 or more")
    if args.warmup > args.jobs:
        parser.error("--warmup must not exceed --jobs")
    config = SoakConfig(
        jobs=args.jobs,
        in_flight=args.in_flight,
        warmup=args.warmup,
        sample_every=args.sample_every,
        download_every=args.download_every,
        side=args.side,
        engine=args.engine,
    )
    result = on_record(lambda: soak(config))
    print(
        f"- {config.jobs} jobs of a {config.side}x{config.side} PNG -> x{config.scale}, engine "
        f"`{config.engine}`, {config.in_flight} in flight, every {config.download_every}-th "
        f"result downloaded; RSS sampled between waves"
    )
    print()
    print(markdown_table(result.samples), end="")
    print()
    print("\n".join(summary(result)))
    return 0 if not result.failures and result.succeeded == config.jobs else 1


if __name__ == "__main__":
    sys.exit(main())
