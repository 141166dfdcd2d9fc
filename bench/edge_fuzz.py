"""The upload route under a long mutation-fuzz run (docs/reliability.md, "Hostile requests").

``--cases`` generated requests from ``tests/multipart_fuzz.py`` (hypothesis strategies:
boundaries, parts, endings, cuts at structural points, byte edits, HTTP framing and headers),
sent in batches of 8 concurrent connections over raw sockets to a real gateway process
(uvicorn, the production app factory) on an embedded Redis with local storage. Every answer
is checked as the short run in the tests checks it; here nothing stops at the first failure:
the counts come out at the end, with the gateway's and Redis's CPU time and the machine's
load. Exits non-zero when any case failed.

    .venv/bin/python bench/edge_fuzz.py [--cases 10000] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import psutil
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from service_load import on_record

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent / "tests"))
from multipart_fuzz import (  # noqa: E402
    CASES_PER_BATCH,
    UPLOAD_IDLE_TIMEOUT_S,
    UPLOAD_TIMEOUT_S,
    Tally,
    cases,
    fuzz_gateway,
    run_batch,
    small_png,
)

from megasr.embedded_redis import EmbeddedRedis  # noqa: E402


def fuzz(count: int, random_seed: int) -> list[str]:
    with tempfile.TemporaryDirectory(prefix="megasr-edge-fuzz-") as folder:
        root = Path(folder)
        with EmbeddedRedis(root / "redis") as redis, fuzz_gateway(redis.url, root) as gateway:
            objects = root / "data" / "objects"
            processes = [psutil.Process(gateway.process.pid), psutil.Process(redis.process.pid)]
            cpu_before = [sum(p.cpu_times()[:2]) for p in processes]
            tally = Tally()
            image = small_png()

            @seed(random_seed)
            @given(batch=st.lists(cases(image), min_size=CASES_PER_BATCH, max_size=CASES_PER_BATCH))
            @settings(
                max_examples=-(-count // CASES_PER_BATCH),
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            def run(batch) -> None:
                run_batch(gateway.port, batch, objects, tally)  # counted, never raised

            started = time.perf_counter()
            run()
            seconds = time.perf_counter() - started
            cpu = [
                sum(p.cpu_times()[:2]) - before
                for p, before in zip(processes, cpu_before, strict=True)
            ]
            alive = gateway.process.poll() is None
    return report(tally, seconds, cpu, alive)


def report(tally: Tally, seconds: float, cpu: list[float], alive: bool) -> list[str]:
    hangs = tally.statuses.get("hang", 0)
    five = sum(
        n for status, n in tally.statuses.items() if isinstance(status, int) and status >= 500
    )
    lines = [
        f"{tally.cases} cases in {seconds:.0f} s ({tally.cases / seconds:.0f}/s), batches of "
        f"{CASES_PER_BATCH} connections; gateway CPU {cpu[0]:.0f} s, Redis CPU {cpu[1]:.0f} s; "
        f"upload deadline {UPLOAD_TIMEOUT_S:g} s, idle {UPLOAD_IDLE_TIMEOUT_S:g} s; "
        f"slowest answer {tally.slowest_s:.2f} s; gateway alive at the end: {alive}",
        "",
        f"- failures: {len(tally.failures)}; 5xx: {five}; hangs: {hangs}",
        "- failures by kind: "
        + ", ".join(f"{k}: {v}" for k, v in tally.failure_kinds.most_common()),
        "- answers: " + ", ".join(f"{k}: {v}" for k, v in sorted(tally.statuses.items(), key=str)),
        "- refusals by problem type: "
        + ", ".join(f"{k}: {v}" for k, v in tally.kinds.most_common()),
        f"- refused by the HTTP server before the app (uvicorn's plain 400): "
        f"{tally.server_refusals}",
        "- mutations applied: " + ", ".join(f"{k}: {v}" for k, v in tally.tags.most_common()),
    ]
    lines += [f"  - FAILED: {failure}" for failure in tally.failures[:20]]
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=10_000, help="generated requests")
    parser.add_argument("--seed", type=int, default=0, help="hypothesis seed")
    args = parser.parse_args(argv)
    lines = on_record(lambda: fuzz(args.cases, args.seed))
    print()
    print("\n".join(lines))
    return 1 if any(line.startswith("  - FAILED") for line in lines) else 0


if __name__ == "__main__":
    sys.exit(main())
