"""OpenMP thread settings for the default engine on the CPU: waiting policy and pinning.

Each setting is a child process started with its environment (OpenMP reads it once, at
start): PyTorch's default, ``OMP_WAIT_POLICY=PASSIVE`` (threads sleep at a barrier instead
of spinning), and pinning one thread per core (``OMP_PROC_BIND=close OMP_PLACES=cores``).
Each child loads the engine eager in its fast dtype, runs one warm-up tile, then times
``--calls`` tiles; the settings take turns ``--rounds`` times and the medians are reported,
wall and CPU seconds (user + system of all threads) per tile, with the load average.

    .venv/bin/python bench/cpu_threads.py --tile 192 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

import torch

from megasr.model.benchmark.machine import describe_machine, load_average
from megasr.model.cpu_isa import describe_isa

SETTINGS = {
    "default": {},
    "OMP_WAIT_POLICY=PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"},
    "pinned (OMP_PROC_BIND=close, OMP_PLACES=cores)": {
        "OMP_PROC_BIND": "close",
        "OMP_PLACES": "cores",
    },
}

CHILD = """
import json, resource, sys, time, torch
from megasr.model.engines.realesrgan import RealESRGANEngine
from megasr.settings import Settings
tile, calls = int(sys.argv[1]), int(sys.argv[2])
engine = RealESRGANEngine(Settings(backend="eager", tile=tile))
engine.load(torch.device("cpu"))
x = torch.rand(1, 3, tile, tile)
engine.run(x)
def cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
walls, cpus = [], []
for _ in range(calls):
    c, t = cpu(), time.perf_counter()
    engine.run(x)
    walls.append(time.perf_counter() - t)
    cpus.append(cpu() - c)
print(json.dumps({"wall": min(walls), "cpu": min(cpus), "dtype": str(engine.dtype)}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tile", type=int, default=192)
    parser.add_argument("--calls", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"{describe_machine_line()}; load average before {load_average()}", flush=True)
    results: dict[str, list[dict]] = {name: [] for name in SETTINGS}
    for _ in range(args.rounds):
        for name, env in SETTINGS.items():
            done = subprocess.run(
                [sys.executable, "-c", CHILD, str(args.tile), str(args.calls)],
                env={**os.environ, **env},
                capture_output=True,
                text=True,
                check=True,
            )
            results[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"\n| setting | {args.tile} px tile, s | CPU s | dtype |\n|---|---:|---:|---|")
    for name, runs in results.items():
        wall = statistics.median(r["wall"] for r in runs)
        cpu = statistics.median(r["cpu"] for r in runs)
        print(f"| {name} | {wall:.2f} | {cpu:.2f} | {runs[0]['dtype']} |")
    print(f"\nload average after {load_average()}")


def describe_machine_line() -> str:
    facts = describe_machine(torch.device("cpu"))
    return f"{facts['cpu']}, {facts['logical_cores']} cores, {describe_isa()}"


if __name__ == "__main__":
    main()
